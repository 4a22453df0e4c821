"""The real SmolLM2-135M-Instruct behind the server: chat answers per adapter (and the base) equal offline
greedy generation by transformers, in one concurrent, mixed-adapter load."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import slimtune as st
from slimtune.embedded import load_smollm2
from slimtune.registry import Registry
from slimtune.serve import ServeConfig
from tests.serve.helpers import ServerThread

pytestmark = pytest.mark.slow
QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?", "Name a primary colour."]


def _adapter(folder: Path, seed: int) -> Path:
    base, _ = load_smollm2()
    model = st.adapt(base, st.LoraConfig(r=8, alpha=16, targets=("q_proj", "v_proj")))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.03)
    model.save_adapter(folder)
    return folder


def _offline(model: Any, tokenizer: Any, question: str, n: int) -> str:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return str(tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True))


def test_smollm2_adapters_served_equal_offline_greedy(tmp_path: Path) -> None:
    folders = {"one": _adapter(tmp_path / "one", 1), "two": _adapter(tmp_path / "two", 2)}
    with Registry(tmp_path / "reg", actor="tests") as reg:
        for name, folder in folders.items():
            reg.add(folder, name)
    model, tokenizer = load_smollm2()
    config = ServeConfig(registry=tmp_path / "reg", base="builtin:smollm2", json_logs=False, max_wait_ms=50,
                         request_timeout_s=600)
    cases = [(m, q) for m in ("one", "two", "smollm2") for q in QUESTIONS]
    with ServerThread(config, model, tokenizer) as srv:
        def ask(case: tuple[str, str]) -> httpx.Response:
            body = {"model": case[0], "max_tokens": 12, "messages": [{"role": "user", "content": case[1]}]}
            return httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=300)

        with ThreadPoolExecutor(len(cases)) as pool:
            replies = list(pool.map(ask, cases))
    del model
    offline: dict[str, Any] = {name: st.load_adapter(load_smollm2()[0], folder) for name, folder in folders.items()}
    offline["smollm2"] = load_smollm2()[0]
    answers = {}
    for (name, question), reply in zip(cases, replies, strict=True):
        assert reply.status_code == 200, reply.text
        got = reply.json()["choices"][0]["message"]["content"]
        assert got == _offline(offline[name], tokenizer, question, 12), (name, question)
        answers[(name, question)] = got
    assert any(answers[("one", q)] != answers[("smollm2", q)] for q in QUESTIONS)  # the adapters change outputs
