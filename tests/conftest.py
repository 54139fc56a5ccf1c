"""Shared fixtures: a tiny model file and tiny synthetic datasets, made once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli_env(tmp_home: Path | None = None) -> dict:
    env = dict(os.environ)
    # One thread per process: deterministic CPU kernels, and tests may run side by side.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    if tmp_home is not None:
        env["XDG_CACHE_HOME"] = str(tmp_home)
    return env


def run_cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python -m clipsan ARGS`` as a user would; returns the finished process."""
    cmd = [sys.executable, "-m", "clipsan", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or cli_env(), timeout=timeout, cwd=cwd)


def run_json(*args, **kw) -> dict:
    proc = run_cli(*args, "--format", "json", **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def strict_loads(text: str):
    """Parse JSON as strict parsers do: NaN, Infinity and -Infinity are errors, not numbers."""
    return json.loads(text, parse_constant=_not_json)


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_worker():
    """Under pytest-xdist (-n 2 on 2 cores), in-process training uses one thread per worker, as the
    CLI subprocesses do (cli_env): two workers with two threads each oversubscribe the cores."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    from clipsan.checkpoints import save_model
    from clipsan.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_model(create_model("clipsan-tiny-rn"), path)
    return path


@pytest.fixture(scope="session")
def caption_data(tmp_path_factory) -> Path:
    from clipsan.data import world

    root = tmp_path_factory.mktemp("captions")
    world.write_caption_dataset(root, 64, seed=0)
    return root


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> Path:
    from clipsan.data import world

    root = tmp_path_factory.mktemp("eval")
    world.write_eval_set(root, 3, seed=1)
    return root


class _Parsed(Exception):
    """Raised by the stand-in API call: carries the config the command line built."""

    def __init__(self, config):
        self.config = config


@pytest.fixture
def config_of(monkeypatch):
    """``config_of(argv)``: the API config ``clipsan ARGV`` builds; the command stops before any work."""
    from clipsan import api
    from clipsan.cli import main

    def capture(config, notes=None):
        raise _Parsed(config)

    for name in ("purify", "poison", "scan"):
        monkeypatch.setattr(api, name, capture)

    def parse(argv: list[str]):
        with pytest.raises(_Parsed) as parsed:
            main([str(a) for a in argv])
        return parsed.value.config

    return parse


def without_key_biases(weights: dict) -> dict:
    """Attention's key bias gets no true gradient (softmax ignores a shift shared by every key), so
    Adam turns its rounding noise into full-size steps that differ with any summation order."""
    import torch

    out = dict(weights)
    for name, tensor in weights.items():
        if name.endswith("in_proj_bias"):
            d = tensor.shape[0] // 3
            out[name] = torch.cat([tensor[:d], tensor[2 * d :]])  # the q, k, v biases, less k's
        elif name.endswith("k_proj.bias"):
            del out[name]
    return out
