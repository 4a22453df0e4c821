"""Authentication, scopes and every limit, over real HTTP: 401, 403, 413, 400 (caps, validation, paths), 404,
429 with Retry-After, and the per-request timeout (504)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from slimtune.errors import ConfigError
from slimtune.serve import load_keys_file
from slimtune.serve.auth import check_api_key, hash_api_key
from tests.serve.conftest import World, auth, server_config
from tests.serve.helpers import running


def post(server: Any, path: str, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60, **kw)


def error_of(reply: httpx.Response) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]  # type: ignore[no-any-return]


GOOD = {"model": "alpha:1", "prompt": "w1 w2", "max_tokens": 2}


def test_health_is_open_and_everything_else_needs_a_key(server: Any, world: World) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics"), ("GET", "/ui"),
                         ("GET", "/admin/adapters")]:
        reply = httpx.request(method, f"{server.url}{path}", json=GOOD if method == "POST" else None)
        assert reply.status_code == 401, path
        assert error_of(reply)["code"] == "missing_api_key"
    bad = post(server, "/v1/completions", GOOD, {"Authorization": "Bearer st-not-a-key"})
    assert bad.status_code == 401 and error_of(bad)["code"] == "invalid_api_key"
    assert post(server, "/v1/completions", GOOD, auth(world)).status_code == 200


def test_admin_routes_need_the_admin_scope(server: Any, world: World) -> None:
    for path in ("/admin/adapters", "/admin/drift"):
        reply = httpx.get(f"{server.url}{path}", headers=auth(world, "infer"))
        assert reply.status_code == 403 and "admin" in error_of(reply)["message"]
        assert httpx.get(f"{server.url}{path}", headers=auth(world, "admin")).status_code == 200


def test_body_limit_gives_413(server: Any, world: World) -> None:
    big = {**GOOD, "prompt": "w1 " * 10_000}
    reply = post(server, "/v1/completions", big, auth(world))
    assert reply.status_code == 413 and error_of(reply)["code"] == "body_too_large"
    raw = json.dumps(big).encode()  # chunked, without Content-Length: counted as it arrives
    chunked = httpx.post(f"{server.url}/v1/completions", content=iter([raw[:5000], raw[5000:]]),
                         headers={**auth(world), "content-type": "application/json"}, timeout=30)
    assert chunked.status_code == 413


@pytest.mark.parametrize(("change", "param", "needle"), [
    ({"max_tokens": 33}, "max_tokens", "cap of 32"),
    ({"prompt": "w1 " * 65}, "prompt", "limit is 64"),
    ({"temperature": 7}, "temperature", "temperature"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"prompt": ["a", "b"]}, "prompt", "one prompt per request"),
    ({"model": "/etc/passwd"}, "model", "looks like a path"),
    ({"model": "../../reg/blobs"}, "model", "looks like a path"),
    ({"model": "alpha:0"}, "model", "positive integer"),
    ({"model": 5}, "model", "string"),
])
def test_validation_and_caps_give_clear_400(server: Any, world: World, change: dict[str, Any], param: str,
                                            needle: str) -> None:
    reply = post(server, "/v1/completions", {**GOOD, **change}, auth(world))
    assert reply.status_code == 400, reply.text
    err = error_of(reply)
    assert err["type"] == "invalid_request_error" and err["param"] == param and needle in err["message"]


def test_missing_field_and_malformed_json(server: Any, world: World) -> None:
    reply = post(server, "/v1/completions", {"model": "alpha"}, auth(world))
    assert reply.status_code == 400 and "prompt" in error_of(reply)["message"]
    raw = httpx.post(f"{server.url}/v1/completions", content=b"{not json",
                     headers={**auth(world), "content-type": "application/json"})
    assert raw.status_code == 400


def test_unknown_model_gives_404(server: Any, world: World) -> None:
    for model in ("nosuch", "alpha:99", "alpha@nowhere"):
        reply = post(server, "/v1/completions", {**GOOD, "model": model}, auth(world))
        assert reply.status_code == 404 and error_of(reply)["code"] == "model_not_found", model


def test_rate_limit_gives_429_with_retry_after(server: Any, world: World) -> None:
    codes = [post(server, "/v1/completions", GOOD, auth(world, "slow")) for _ in range(4)]
    assert [r.status_code for r in codes[:2]] == [200, 200]
    limited = codes[2]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert error_of(limited)["type"] == "rate_limit_error"
    assert post(server, "/v1/completions", GOOD, auth(world, "infer")).status_code == 200  # other keys unaffected


def test_timeout_gives_504_and_the_server_goes_on(world: World, tok: Any) -> None:
    config = server_config(world, keys_file=None, request_timeout_s=0.05, max_tokens_cap=512)
    with running(config, tok) as srv:
        slow = post(srv, "/v1/completions", {**GOOD, "max_tokens": 500})
        assert slow.status_code == 504 and error_of(slow)["type"] == "timeout_error"
        assert httpx.get(f"{srv.url}/health").status_code == 200


def test_keys_are_stored_hashed_and_checked(world: World, tmp_path: Any) -> None:
    text = world.keys_file.read_text()
    assert all(key not in text for key in world.keys.values())
    keys = load_keys_file(world.keys_file)
    assert {k.id for k in keys} == {"infer", "admin", "slow"}
    for method in ("sha256", "scrypt"):
        stored = hash_api_key("secret", method)  # type: ignore[arg-type]
        assert check_api_key("secret", stored) and not check_api_key("Secret", stored)
    bad = tmp_path / "keys.json"
    bad.write_text(json.dumps({"keys": [{"id": "x", "hash": "plaintext", "scopes": ["inference"]}]}))
    with pytest.raises(ConfigError, match="never store a clear key"):
        load_keys_file(bad)
    bad.write_text(json.dumps({"keys": [{"id": "x", "hash": "sha256$00$00", "scopes": ["root"]}]}))
    with pytest.raises(ConfigError, match="scopes"):
        load_keys_file(bad)
