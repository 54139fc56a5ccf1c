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


@pytest.fixture(scope="module")
def one_thread():
    """A module's in-process runs on one thread, as the CLI subprocesses run (cli_env)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_in_process(capsys, *argv) -> dict:
    """``clipsan ARGV --format json`` in this process; returns the report."""
    import clipsan.cli

    capsys.readouterr()
    code = clipsan.cli.main([*map(str, argv), "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


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


# --------------------------------------------------------------------------- SigLIP: tokenizers built here, never downloaded

SIGLIP_ARCH = "clipsan-tiny-siglip"


def tokenizer_corpus(n: int = 200) -> list[str]:
    """World captions, class names and prompt words: what the tiny SigLIP models are asked to read."""
    from clipsan.data import world
    from clipsan.evaluation.templates import fill, load_templates

    captions = [world.render_sample(world.WorldConfig(), 0, i)[1] for i in range(n)]
    prompts = [fill(t, "banana") for t in load_templates("openai")]
    return captions + world.classnames() + prompts + ["a photo of a cat.", "Ünïcode naïve café — 東京"]


def unigram_tokenizer_json(folder: Path, sentences: list[str], vocab_size: int = 300) -> Path:
    """A tiny Unigram tokenizer.json (SentencePiece-style: NFKC, metaspace, '</s>' appended), trained on ``sentences``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(sentences, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder / "tokenizer.json"


def spiece_model(folder: Path, sentences: list[str], vocab_size: int = 60) -> Path:
    """A tiny SentencePiece unigram model as SigLIP's spiece.model lays out its ids (<pad> 0, </s> 1, <unk> 2)."""
    import io

    import sentencepiece

    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(buffer.getvalue())
    return folder / "spiece.model"


@pytest.fixture(scope="session")
def siglip_model(tmp_path_factory) -> Path:
    """The tiny SigLIP architecture as an open_clip folder, with a tokenizer.json trained on the world's captions."""
    import torch

    from clipsan.checkpoints import tokenizer_files
    from clipsan.checkpoints.output import OutputPlan, write_output
    from clipsan.models import create_model

    torch.manual_seed(0)
    model = create_model(SIGLIP_ARCH)
    words = tmp_path_factory.mktemp("siglip-tokenizer")
    unigram_tokenizer_json(words, tokenizer_corpus())
    model.file_tokenizer = tokenizer_files.siglip_tokenizer(words, model.context_length, open_clip_clean="whitespace")
    return write_output(OutputPlan("open_clip", tmp_path_factory.mktemp("models") / "tiny-siglip"), model, None, {})
