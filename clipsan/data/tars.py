"""Webdataset shards read in place: member offsets from the tar headers, bytes by seeking.

Shards are never extracted. ``list_tar_members`` finds every regular file's data
offset and size and says whether the shard ends early (a cut download); a
``TarImages`` reads members through file handles opened lazily in the process
that uses them.
"""

from __future__ import annotations

import os
import tarfile
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipsan.errors import UserError

MAX_OPEN_SHARDS = 32


class TarImages:
    """Images stored as tar members, addressed by (shard, data offset, size).

    Handles are opened on first use in the current process and never pickled:
    a handle inherited through fork shares its file offset with the parent.
    """

    def __init__(self, shards: list[str], shard_ids: array, offsets: array, sizes: array, keys: list[str]):
        self.shards = shards
        self.shard_ids = shard_ids
        self.offsets = offsets
        self.sizes = sizes
        self.keys = keys
        self._handles: OrderedDict[int, object] = OrderedDict()
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        state["_pid"] = None
        return state

    def read(self, index: int) -> bytes:
        handle = self._handle(self.shard_ids[index])
        handle.seek(self.offsets[index])
        return handle.read(self.sizes[index])

    def ref(self, index: int) -> str:
        return f"{self.shards[self.shard_ids[index]]}:{self.keys[index]}"

    def select(self, indices: Sequence[int]) -> TarImages:
        return TarImages(
            self.shards,
            array("l", (self.shard_ids[i] for i in indices)),
            array("q", (self.offsets[i] for i in indices)),
            array("q", (self.sizes[i] for i in indices)),
            [self.keys[i] for i in indices],
        )

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def _handle(self, shard_id: int):
        if self._pid != os.getpid():
            # Forget (without closing) handles that belong to another process.
            self._handles = OrderedDict()
            self._pid = os.getpid()
        handle = self._handles.get(shard_id)
        if handle is None:
            handle = open(self.shards[shard_id], "rb")  # noqa: SIM115 - kept open across reads, closed by close()
            self._handles[shard_id] = handle
            if len(self._handles) > MAX_OPEN_SHARDS:
                self._handles.popitem(last=False)[1].close()
        else:
            self._handles.move_to_end(shard_id)
        return handle


@dataclass
class Member:
    offset: int
    size: int


# Reading headers ourselves is ~10x faster than tarfile's TarInfo parsing, which
# matters for millions of members. Plain ustar/GNU headers, pax extended headers
# (webdataset writes one per member for its float mtimes) and GNU long names are
# handled here; anything else (global pax headers, sparse files, base-256 sizes,
# bad checksums) sends the whole shard to tarfile.
_BLOCK = 512
_FILE_TYPES = (b"0", b"\0", b"7")
_NO_DATA_TYPES = (b"1", b"2", b"3", b"4", b"5", b"6")
_PAX_HEADER, _GNU_LONG_NAME, _GNU_LONG_LINK = b"x", b"L", b"K"


class _UnusualHeader(Exception):
    """A header the fast scanner leaves to tarfile."""


def list_tar_members(shard: Path) -> tuple[list[tuple[str, Member]], bool]:
    """(name, data offset/size) of every regular file in an uncompressed tar, and whether it is truncated.

    A tar ends with zero blocks; a shard whose bytes stop before one (cut inside a
    member, inside its padding, or between members) is truncated. The members
    whose data is complete are kept; one whose data runs past the end is left out.
    """
    try:
        with open(shard, "rb") as handle:
            return _scan_tar_headers(handle, os.fstat(handle.fileno()).st_size)
    except _UnusualHeader:
        return _scan_with_tarfile(shard)
    except OSError as err:
        raise UserError(f"{shard}: cannot read ({err.strerror})") from None


def _scan_tar_headers(handle, file_size: int) -> tuple[list[tuple[str, Member]], bool]:
    members: list[tuple[str, Member]] = []
    extended: dict[str, str] = {}  # pax / GNU long-name values for the next member
    offset = 0
    while True:
        handle.seek(offset)
        header = handle.read(_BLOCK)
        if offset == 0 and (len(header) < _BLOCK or header.count(0) == _BLOCK):
            raise _UnusualHeader  # empty or not a tar: let tarfile word the error
        if len(header) < _BLOCK:
            return members, True  # the file stops before the end-of-archive block
        if header.count(0) == _BLOCK:
            return members, False  # end of archive (one zero block is enough, as GNU tar reads it)
        kind, size = _parse_header(header)
        data_offset = offset + _BLOCK
        if kind in (_PAX_HEADER, _GNU_LONG_NAME):
            data = handle.read(size)
            if len(data) < size:
                return members, True
            extended.update(_parse_pax(data) if kind == _PAX_HEADER else {"path": _gnu_long_name(data)})
        elif kind == _GNU_LONG_LINK:
            pass  # a link target: irrelevant to us, and must not reset a pending long name
        else:
            if "size" in extended:
                size = _pax_int(extended["size"])
            if kind in _FILE_TYPES:
                if data_offset + size > file_size:
                    return members, True
                members.append((extended.get("path") or _header_name(header), Member(data_offset, size)))
            extended = {}
        offset = data_offset + -(-size // _BLOCK) * _BLOCK


def _parse_header(header: bytes) -> tuple[bytes, int]:
    """(type flag, size) of a header the fast scanner understands; _UnusualHeader otherwise."""
    kind = header[156:157]
    if kind not in _FILE_TYPES and kind not in _NO_DATA_TYPES and kind not in (_PAX_HEADER, _GNU_LONG_NAME, _GNU_LONG_LINK):
        raise _UnusualHeader
    try:
        stored_checksum = int(header[148:156].strip(b"\0 ") or b"-1", 8)
        size = int(header[124:136].strip(b"\0 ") or b"0", 8)  # base-256 sizes fail here
    except ValueError:
        raise _UnusualHeader from None
    if stored_checksum != sum(header) - sum(header[148:156]) + 8 * ord(" "):
        raise _UnusualHeader
    return kind, size


def _parse_pax(data: bytes) -> dict[str, str]:
    """Records of the form b"LENGTH KEY=VALUE\\n"."""
    records: dict[str, str] = {}
    position = 0
    try:
        while position < len(data) and data[position : position + 1] != b"\0":
            space = data.index(b" ", position)
            length = int(data[position:space])
            if length <= space - position:
                raise ValueError("pax record length")
            key, _, value = data[space + 1 : position + length - 1].partition(b"=")
            records[key.decode("utf-8", "replace")] = value.decode("utf-8", errors="surrogateescape")
            position += length
    except ValueError:
        raise _UnusualHeader from None
    return records


def _pax_int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _UnusualHeader from None


def _gnu_long_name(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")


def _header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:265] == b"ustar\x0000":  # POSIX ustar: long paths are split into prefix + name
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", errors="surrogateescape")


def _scan_with_tarfile(shard: Path) -> tuple[list[tuple[str, Member]], bool]:
    members: list[tuple[str, Member]] = []
    file_size = shard.stat().st_size
    try:
        with tarfile.open(shard, mode="r:") as archive:
            for info in archive:
                if info.isfile():
                    if info.offset_data + info.size > file_size:
                        return members, True
                    members.append((info.name, Member(info.offset_data, info.size)))
            # tarfile stops quietly at the end of the file too: look at the block it stopped on.
            stopped_at = archive.offset
    except (tarfile.TarError, OSError, EOFError) as err:
        if not members:
            raise UserError(f"{shard}: not a readable (uncompressed) tar file ({err})") from None
        return members, True
    with open(shard, "rb") as handle:
        handle.seek(stopped_at)
        return members, handle.read(_BLOCK) != bytes(_BLOCK)


def read_member(handle, member: Member) -> bytes:
    handle.seek(member.offset)
    return handle.read(member.size)
