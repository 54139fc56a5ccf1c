"""Word banks derived from WordNet 3.0 (built once by ``scripts/build_wordbanks.py``).

The files live in ``clipsan/wordbanks/`` inside an installed wheel and in the
repository's top-level ``wordbanks/`` in a source checkout; both are looked up.
Everything is read lazily on first use and cached for the life of the process.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

from clipsan.errors import UserError

REPO_BANK_DIR = Path(__file__).resolve().parents[2] / "wordbanks"

# Regular inflection suffixes, tried in order when a word is not a lemma itself
# (the same idea as WordNet's morphy: "dogs" -> "dog", "running" -> "run").
_SUFFIX_RULES = (
    ("ies", "y"),
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("es", "e"),
    ("es", ""),
    ("s", ""),
    ("ied", "y"),
    ("ed", "e"),
    ("ed", ""),
    ("ing", "e"),
    ("ing", ""),
    ("est", "e"),
    ("est", ""),
    ("er", "e"),
    ("er", ""),
)


def _read_bank_file(name: str) -> str:
    installed = resources.files("clipsan").joinpath("wordbanks", name)
    if installed.is_file():
        return installed.read_text(encoding="utf-8")
    source_checkout = REPO_BANK_DIR / name
    if source_checkout.is_file():
        return source_checkout.read_text(encoding="utf-8")
    raise UserError(f"{name}: word bank file missing from the clipsan installation (looked in clipsan/wordbanks/ and {REPO_BANK_DIR})")


def _read_list(name: str) -> tuple[str, ...]:
    return tuple(line for line in _read_bank_file(name).splitlines() if line)


def _read_table(name: str) -> dict[str, str]:
    """First column -> the rest of the line (left unsplit: most rows are never looked at)."""
    table = {}
    for line in _read_bank_file(name).splitlines():
        key, _, rest = line.partition("\t")
        table[key] = rest
    return table


@functools.cache
def _adjectives() -> tuple[str, ...]:
    return _read_list("adjectives.txt")


@functools.cache
def _verbs() -> tuple[str, ...]:
    return _read_list("verbs.txt")


@functools.cache
def _nouns() -> tuple[str, ...]:
    return _read_list("nouns.txt")


@functools.cache
def _synonym_table() -> dict[str, str]:
    return _read_table("synonyms.tsv")


@functools.cache
def _exception_table() -> dict[str, str]:
    return _read_table("exceptions.tsv")


@functools.cache
def _verb_form_table() -> dict[str, str]:
    return _read_table("verb_forms.tsv")


def adjectives() -> list[str]:
    """3000 adjectives, common -> rare."""
    return list(_adjectives())


def verbs() -> list[str]:
    """3000 relational verbs (base form), common -> rare."""
    return list(_verbs())


def nouns() -> list[str]:
    """3000 concrete nouns, common -> rare."""
    return list(_nouns())


def lemma_candidates(word: str) -> list[str]:
    """The word itself, its irregular base form, then regular de-inflections."""
    candidates = [word]
    if word in _exception_table():
        candidates.append(_exception_table()[word])
    for suffix, replacement in _SUFFIX_RULES:
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            candidates.append(word[: -len(suffix)] + replacement)
    return candidates


@functools.lru_cache(maxsize=65536)
def _synonyms_of(word: str) -> tuple[str, ...]:
    table = _synonym_table()
    for lemma in lemma_candidates(word):
        if lemma in table:
            return tuple(s for s in table[lemma].split("|") if s != word)
    return ()


def synonyms(word: str) -> list[str]:
    """WordNet synonyms of ``word`` over all senses, in sense order (deterministic).

    Lowercase letters and spaces only (multi-word synonyms keep their spaces);
    inflected words are looked up by their lemma ("dogs" -> synonyms of "dog").
    """
    word = word.lower()
    if not re.fullmatch(r"[a-z]+", word):
        return []
    return list(_synonyms_of(word))


def verb_forms(verb: str) -> tuple[str, str, str] | None:
    """(3rd person, past, -ing) of a bank verb, or None if it is not one."""
    row = _verb_form_table().get(verb)
    if row is None:
        return None
    third, past, ing = row.split("\t")
    return third, past, ing
