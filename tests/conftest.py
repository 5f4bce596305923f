"""Tiny random HF models built from configs, offline, with the bundled MiniLM tokenizer."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine they lose a lot.
torch.set_num_threads(1)

ARCHS = ("gpt2", "llama", "qwen2", "qwen3", "gemma", "gpt_neox", "opt", "bert")


@functools.lru_cache(maxsize=1)
def bundled_tokenizer():
    from transformers import AutoTokenizer

    from reprlab.models import bundled_model_path

    return AutoTokenizer.from_pretrained(str(bundled_model_path()))


def tiny_config(arch: str, hidden: int = 32, layers: int = 3):
    import transformers as t

    vocab = bundled_tokenizer().vocab_size
    common = dict(vocab_size=vocab, pad_token_id=0, bos_token_id=101, eos_token_id=102)
    h, heads = hidden, 4
    if arch == "gpt2":
        return t.GPT2Config(n_embd=h, n_layer=layers, n_head=heads, n_positions=256, **common)
    if arch == "llama":
        return t.LlamaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=2, intermediate_size=2 * h, **common)
    if arch == "qwen2":
        return t.Qwen2Config(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=2, intermediate_size=2 * h, **common)
    if arch == "qwen3":
        return t.Qwen3Config(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=2, intermediate_size=2 * h, head_dim=h // heads,
                             **common)
    if arch == "gemma":
        return t.GemmaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=1, intermediate_size=2 * h, head_dim=h // heads,
                             **common)
    if arch == "gpt_neox":
        return t.GPTNeoXConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=2 * h, **common)
    if arch == "opt":
        return t.OPTConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                           ffn_dim=2 * h, word_embed_proj_dim=h, max_position_embeddings=256,
                           **common)
    if arch == "bert":
        return t.BertConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=2 * h, **common)
    raise ValueError(arch)


def make_tiny(arch: str = "gpt2", hidden: int = 32, layers: int = 3, seed: int = 0):
    """A tiny random model of ``arch`` wrapped as a :class:`reprlab.models.LoadedModel`."""
    import transformers as t

    from reprlab.models import LoadedModel

    torch.manual_seed(seed)
    config = tiny_config(arch, hidden, layers)
    config._attn_implementation = "eager"
    cls = t.AutoModel if arch == "bert" else t.AutoModelForCausalLM
    model = cls.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 3_000_000, f"tiny {arch} model has {n_params} parameters"
    import copy

    tok = copy.deepcopy(bundled_tokenizer())
    return LoadedModel.from_hf(model, tok, name=f"tiny-{arch}")


def save_lm(lm, path) -> Path:
    """Write ``lm``'s model and tokenizer to ``path`` (a directory ``load_model`` reads)."""
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return Path(path)


def save_tiny(path, arch: str = "gpt2", **kwargs) -> Path:
    """A tiny random model (see :func:`make_tiny`) saved to ``path``; returns the path."""
    return save_lm(make_tiny(arch, **kwargs), path)


@pytest.fixture(params=ARCHS)
def tiny_any(request):
    return make_tiny(request.param)


@pytest.fixture
def tiny_gpt2():
    return make_tiny("gpt2")


@pytest.fixture
def tiny_bert():
    return make_tiny("bert")


@pytest.fixture(scope="session")
def minilm():
    from reprlab.models import load_model

    return load_model("minilm")


TEXTS = [
    "The city of Paris is in France.",
    "Hello.",
    "A somewhat longer sentence that needs a few more tokens than the others do.",
    "Short one here",
    "The city of Tokyo is in Japan.",
]


class ToyMini:
    """A mini toy build (same world and code path as ``toy``, tiny model, few steps)."""

    def __init__(self, home: Path):
        from reprlab.toy.variants import build

        self.home = home
        self.paths = build("mini", home=home, progress=False)
        self.base, self.sft = self.paths.base, self.paths.sft


@pytest.fixture(scope="session")
def toy_mini(tmp_path_factory):
    """Built once per test session in a few seconds; ``toy_mini.home`` works as REPRLAB_HOME
    (then ``--model toy-mini`` / ``toy-mini-sft`` resolve to it)."""
    return ToyMini(tmp_path_factory.mktemp("reprlab-home"))


def toy_env(home: Path) -> dict:
    env = dict(os.environ, REPRLAB_HOME=str(home), HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="session")
def toy_full(tmp_path_factory):
    """The full ``toy`` / ``toy-sft`` build (slow tests only; minutes): built in a fresh home,
    SIGKILLed mid-training and built again, which must resume. Returns its ToyPaths with
    ``.home`` (use as REPRLAB_HOME so ``--model toy`` resolves to it)."""
    home = tmp_path_factory.mktemp("toy-full")
    cmd = [sys.executable, "-m", "reprlab", "toy", "build", "--no-progress"]
    proc = subprocess.Popen(cmd, env=toy_env(home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = home / "toy" / ".default.partial" / "state.safetensors"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and time.time() - state.stat().st_mtime < 30 \
                and _state_step(state) >= 100:
            break
        time.sleep(2)
    assert proc.poll() is None, "the build ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (home / "toy" / "default").exists()
    done = subprocess.run(cmd, env=toy_env(home), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming the toy build at base step" in done.stderr
    from reprlab.toy.build import ToyPaths

    return ToyPaths(home / "toy" / "default")


def _state_step(path: Path) -> int:
    from reprlab.trainstate import read_train_state

    try:
        got = read_train_state(path)
    except Exception:  # being replaced at this moment
        return 0
    return 0 if got is None else int(got[1]["info"]["step"])
