"""The server over real HTTP on loopback: outputs equal offline inference, mixed-adapter batches, streaming,
registry resolution (aliases that move under load), and a corrupt adapter that fails alone."""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from slimtune.registry import Registry
from tests.serve.conftest import World, auth
from tests.serve.helpers import offline_greedy, words_prompt

MAX_TOKENS = 8


def complete(server: Any, world: World, model: str, prompt: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, **extra}
    return httpx.post(f"{server.url}/v1/completions", json=body, headers=auth(world), timeout=60)


def metric(server: Any, world: World, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=auth(world), timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_concurrent_mixed_adapter_outputs_equal_offline_greedy(server: Any, world: World, tok: Any) -> None:
    rng = random.Random(1)
    cases = [(model, words_prompt(rng, 2, 9)) for model in ("alpha:1", "alpha:2", "beta", "gamma", "tiny") * 3]
    batches_before = metric(server, world, "slimtune_batch_size_count")
    with ThreadPoolExecutor(len(cases)) as pool:
        replies = list(pool.map(lambda c: complete(server, world, *c), cases))
    assert [r.status_code for r in replies] == [200] * len(cases)
    folders = {"alpha:1": world.folders["a1"], "alpha:2": world.folders["a2"], "beta": world.folders["b1"],
               "gamma": world.folders["c1"], "tiny": None}
    texts: dict[str, set[str]] = {}
    for (model, prompt), reply in zip(cases, replies, strict=True):
        body = reply.json()
        assert body["choices"][0]["text"] == offline_greedy(folders[model], tok, prompt, MAX_TOKENS), (model, prompt)
        assert body["model"] == {"beta": "beta:1", "gamma": "gamma:1"}.get(model, model)
        texts.setdefault(prompt, set()).add(body["choices"][0]["text"])
    batches = metric(server, world, "slimtune_batch_size_count") - batches_before
    assert batches < len(cases), "requests were not batched together"
    outputs = {r.json()["choices"][0]["text"] for r in replies}
    assert len(outputs) > 5  # adapters really differ


def test_chat_and_streaming_match_offline(server: Any, world: World, tok: Any) -> None:
    messages = [{"role": "user", "content": "hello w3 w7 w11"}]
    body = {"model": "alpha@production", "messages": messages, "max_tokens": MAX_TOKENS}
    plain = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=auth(world), timeout=60)
    assert plain.status_code == 200, plain.text
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = offline_greedy(world.folders["a1"], tok, prompt, MAX_TOKENS)
    reply = plain.json()
    assert reply["object"] == "chat.completion" and reply["model"] == "alpha:1"
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": expected}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True},
                      headers=auth(world), timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 3
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_stop_strings_and_seeded_sampling(server: Any, world: World) -> None:
    full = complete(server, world, "beta", "w5 w6 w7").json()["choices"][0]["text"]
    words = full.split()
    assert len(words) >= 3
    cut = complete(server, world, "beta", "w5 w6 w7", stop=[words[2]]).json()["choices"][0]
    assert cut["text"] == full[: full.index(words[2])] and cut["finish_reason"] == "stop"
    sampled = [complete(server, world, "beta", "w5 w6 w7", temperature=1.5, seed=s).json()["choices"][0]["text"]
               for s in (1, 1, 2, 3, 4)]
    assert sampled[0] == sampled[1]  # same seed, same tokens
    assert len(set(sampled)) > 1  # different seeds sample differently


def test_models_lists_base_names_aliases_and_versions(server: Any, world: World) -> None:
    ids = [m["id"] for m in httpx.get(f"{server.url}/v1/models", headers=auth(world)).json()["data"]]
    assert ids[0] == "tiny"
    assert {"alpha", "alpha@production", "alpha:1", "alpha:2", "roll@production"} <= set(ids)


def test_corrupt_blob_fails_that_adapter_while_others_serve(server: Any, world: World) -> None:
    reg = Registry(world.registry)
    sha = next(f.sha256 for f in reg.show("broken:1").files if f.relpath == "adapter_model.safetensors")
    blob = reg.blobs.path(sha)
    reg.close()
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0x01
    blob.write_bytes(bytes(data))
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda m: complete(server, world, m, "w1 w2"), ["broken", "alpha:1", "beta"] * 2))
    for model, reply in zip(["broken", "alpha:1", "beta"] * 2, replies, strict=True):
        if model == "broken":
            assert reply.status_code == 500
            err = reply.json()["error"]
            assert err["code"] == "adapter_load_failed" and "broken:1" in err["message"]
            assert "tampered or corrupt" in err["message"]
        else:
            assert reply.status_code == 200, reply.text
    assert complete(server, world, "gamma", "w3").status_code == 200
    assert "broken:1" not in httpx.get(f"{server.url}/health").json()["loaded"]


def _load(server: Any, world: World, model: str, n: int, workers: int) -> list[tuple[float, httpx.Response]]:
    rng = random.Random(3)
    prompts = [words_prompt(rng, 2, 6) for _ in range(n)]

    def one(prompt: str) -> tuple[float, httpx.Response]:
        reply = complete(server, world, model, prompt, max_tokens=4)
        return time.monotonic(), reply

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, prompts))


def test_rollback_in_the_registry_during_load_fails_no_request(server: Any, world: World) -> None:
    moved_at: list[float] = []

    def roll_back_midway() -> None:
        time.sleep(1.0)
        with Registry(world.registry, actor="ops") as reg:
            reg.rollback("roll", "production", reason="test: bad version")
        moved_at.append(time.monotonic())

    with ThreadPoolExecutor(1) as side:
        mover = side.submit(roll_back_midway)
        results = _load(server, world, "roll@production", n=120, workers=8)
        mover.result()
    assert all(r.status_code == 200 for _, r in results), [r.text for _, r in results if r.status_code != 200]
    served = [(t, r.json()["model"]) for t, r in results]
    assert {m for _, m in served} <= {"roll:1", "roll:2"}
    assert any(m == "roll:2" for _, m in served), "the load ended before the rollback"
    late = [m for t, m in served if t > moved_at[0] + 1.0]
    assert late and set(late) == {"roll:1"}, "the rollback did not take effect within a second"


def test_admin_rollback_route(server: Any, world: World) -> None:
    assert complete(server, world, "admin-roll@production", "w1").json()["model"] == "admin-roll:2"
    body = {"name": "admin-roll", "alias": "production", "reason": "test"}
    denied = httpx.post(f"{server.url}/admin/rollback", json=body, headers=auth(world, "infer"))
    assert denied.status_code == 403
    reply = httpx.post(f"{server.url}/admin/rollback", json=body, headers=auth(world, "admin"))
    assert reply.status_code == 200, reply.text
    assert reply.json()["version"] == 1 and reply.json()["previous"] == 2
    assert complete(server, world, "admin-roll@production", "w1").json()["model"] == "admin-roll:1"
    with Registry(world.registry) as reg:
        assert reg.aliases("admin-roll")["production"] == 1
        assert any(e.action == "rollback" and e.reason == "test" for e in reg.audit_log("admin-roll"))
    again = httpx.post(f"{server.url}/admin/rollback", json=body, headers=auth(world, "admin"))
    assert again.status_code == 404 and "no previous version" in again.json()["error"]["message"]
    overview = httpx.get(f"{server.url}/admin/adapters", headers=auth(world, "admin")).json()
    assert overview["models"]["admin-roll"]["aliases"] == {"production": 1}
