"""A CPU run keeps the memory a step frees for the next step (clipsan.engine.host_memory).

Each check runs in a fresh interpreter: the allocator setting is per process and cannot be undone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest


def _huge_pages_always() -> bool:
    try:
        return "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


# The fault counts below are 4 KiB pages; a kernel that backs every mapping with huge pages faults 512x less.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or _huge_pages_always(), reason="counts 4 KiB page faults on Linux")

# One "step" allocates a 400 MB tensor and frees it; the next allocates 300 MB in two tensors (a later
# step's activations). Report the resident memory left after the free and the next step's page faults.
PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from clipsan.config.train import TrainConfig
    from clipsan.engine.runtime import local_runtime
    from clipsan.engine.speed import prepare_model

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    if sys.argv[1] != "none":  # a CPU training run, eager or compiled, about to take its first step
        prepare_model(torch.nn.Linear(2, 2), TrainConfig(compile=sys.argv[1] == "compiled"), local_runtime("cpu", "fp32"))
    x = torch.ones(100_000_000)  # 400 MB, written: every page touched
    del x
    rss_after_free = rss_mb()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    later = [torch.ones(50_000_000), torch.ones(25_000_000)]
    next_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    before = rss_mb()
    for _ in range(2):  # 16 MB twice: freeing the first raises glibc's adaptive mmap threshold past it
        y = torch.ones(4_000_000)
        del y
    print(json.dumps({"rss_after_free_mb": rss_after_free, "next_faults": next_faults, "held_16mb": rss_mb() - before}))
    """
)


def probe(mode: str, **env) -> dict:
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True, env={**clean_env, **env}).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default():
    # glibc's default: the 400 MB block is mmapped, unmapped on free, and faulted in page by page again.
    return probe("none")


def test_eager_cpu_training_reuses_freed_memory_instead_of_faulting_it_in_again(default):
    kept = probe("cpu")
    assert default["next_faults"] > 30_000  # 300 MB in 4 KiB pages is 73,242 faults (fewer with huge pages)
    # The freed block stays resident, and the next step's tensors take its pages: no new faults.
    assert kept["rss_after_free_mb"] > default["rss_after_free_mb"] + 300
    assert kept["next_faults"] < default["next_faults"] / 10


def test_compiled_training_hands_freed_memory_back_and_a_users_own_tunables_are_kept(default):
    # --compile: the kept heap fragments (~1.4 GB on RN50) for no speed, so large blocks go back at
    # once, as under glibc's default for this 400 MB block; a user's own setting is theirs.
    for theirs in (
        probe("compiled"),
        probe("cpu", MALLOC_PERTURB_="0"),  # the README's way to keep glibc's default
        probe("cpu", MALLOC_MMAP_MAX_="65536"),
        probe("cpu", GLIBC_TUNABLES="glibc.malloc.mmap_max=65536"),
    ):
        assert abs(theirs["rss_after_free_mb"] - default["rss_after_free_mb"]) < 100
        assert theirs["next_faults"] > default["next_faults"] / 2
    # glibc's default keeps the second 16 MB block in its heap; a compiled run's fixed threshold does not.
    assert default["held_16mb"] > 12 and probe("compiled")["held_16mb"] < 4
