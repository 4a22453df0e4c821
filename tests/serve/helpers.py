"""Helpers for the serving tests: a tiny word-level tokenizer with a ChatML template, adapters saved with
reference profiles and registered, and a real uvicorn server on a loopback socket in a background thread."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import slimtune as st
from slimtune.registry import Registry
from slimtune.serve import ServeConfig, build_profile, create_app
from tests.conftest import tiny_llama

SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = [f"w{i}" for i in range(200)] + ["user", "assistant", "system", "hello", "world"]
CHATML = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_tokenizer() -> Any:
    """A WordLevel tokenizer over 209 tokens (fits the tiny model's 256) with a ChatML-like template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = CHATML
    return tok


def words_prompt(rng: random.Random, lo: int, hi: int, first: int = 0, last: int = 100) -> str:
    """A prompt of lo..hi random words from w{first}..w{last - 1}."""
    return " ".join(f"w{rng.randrange(first, last)}" for _ in range(rng.randint(lo, hi)))


def make_adapter_dir(folder: Path, seed: int, std: float, tokenizer: Any, profile_prompts: list[str] | None = None,
                     targets: list[str] | None = None) -> Path:
    """A LoRA adapter on tiny_llama(0), randomised (``std``), saved in the PEFT layout, with profile.json."""
    model = st.adapt(tiny_llama(0), st.LoraConfig(r=4, alpha=8, targets=tuple(targets or ("q_proj", "v_proj"))))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    model.eval()
    model.save_adapter(folder)
    if profile_prompts:
        build_profile(model, tokenizer, profile_prompts, "default", max_tokens=8).save(folder)
    return folder


def offline_greedy(folder: Path | None, tokenizer: Any, prompt: str, max_tokens: int) -> str:
    """What a fresh base (plus the adapter in ``folder``) generates for ``prompt``, by transformers' generate."""
    base = tiny_llama(0)
    model: Any = st.load_adapter(base, folder) if folder is not None else base
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return str(tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True))


class ServerThread:
    """uvicorn on a loopback socket bound by us (no port race), stopped on exit."""

    def __init__(self, config: ServeConfig, model: Any, tokenizer: Any) -> None:
        import uvicorn

        self.app = create_app(config, model, tokenizer)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> Any:
        return self.app.state.slimtune

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


@contextlib.contextmanager
def running(config: ServeConfig, tokenizer: Any, model: Any = None) -> Iterator[ServerThread]:
    with ServerThread(config, model if model is not None else tiny_llama(0), tokenizer) as server:
        yield server


def register(reg: Registry, folder: Path, name: str) -> str:
    return str(reg.add(folder, name))
