"""Everything one server holds: the model, its adapters, the batcher, keys, limits, metrics and monitors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from starlette.requests import Request

from slimtune.core.model import AdaptedModel
from slimtune.errors import ConfigError
from slimtune.serve.adapters import AdapterManager
from slimtune.serve.auth import ApiKey, KeyStore, RateLimiter, load_keys_file, retry_after_header
from slimtune.serve.batcher import Batcher
from slimtune.serve.config import ServeConfig
from slimtune.serve.drift import DriftMonitor
from slimtune.serve.errors import BadRequest, Forbidden, RateLimited, Unauthorized
from slimtune.serve.metrics import ServeMetrics
from slimtune.serve.rollback import AutoRollback

log = logging.getLogger(__name__)


def load_base(base: str) -> tuple[Any, Any]:
    """(model, tokenizer) for ``builtin:smollm2`` or a local model folder (never a hub download)."""
    if base == "builtin:smollm2":
        from slimtune.embedded.models import load_smollm2

        return load_smollm2()
    if base.startswith("builtin:"):
        raise ConfigError(f"unknown built-in base {base!r}; the built-in one is 'builtin:smollm2'")
    folder = Path(base)
    if not folder.is_dir():
        raise ConfigError(f"base model folder {base!r} does not exist; give a local folder or 'builtin:smollm2'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


class ServerState:
    """Built once by ``create_app``; handlers reach it as ``request.app.state.slimtune``."""

    def __init__(self, config: ServeConfig, model: Any, tokenizer: Any) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.model = model if isinstance(model, AdaptedModel) else AdaptedModel(model)
        self.model.eval()
        self.metrics = ServeMetrics()
        log_path = config.monitor_dir / "features.jsonl" if config.monitor_dir is not None else None
        self.monitor = DriftMonitor(config.monitor_window, config.drift, log_path)
        base_names = {config.base, config.base_name, "base"}
        self.manager = AdapterManager(self.model, config.registry, base_names, config.base_name,
                                      ttl_s=config.alias_ttl_s, cap=config.max_loaded_adapters, monitor=self.monitor)
        self.rollback = AutoRollback(config.rollback, self.manager, self.monitor, self.metrics, config.audit_log)
        self.manager.on_alias_move.append(self.rollback.alias_moved)
        self.batcher = Batcher(self.manager, tokenizer, self.metrics, self.monitor, max_batch=config.max_batch,
                               max_wait_ms=config.max_wait_ms, max_queue=config.max_queue,
                               hidden_every=config.monitor_hidden_every,
                               observers=[self.rollback.observe])
        self.keys = KeyStore(load_keys_file(config.keys_file) if config.keys_file is not None else [])
        self.limiter = RateLimiter(config.rate_per_s, config.rate_burst)

    def authorize(self, request: Request, scope: str | None, limit: bool = True) -> ApiKey | None:
        """401 without a valid key, 403 without ``scope`` (None: any valid key), 429 over the rate."""
        if not self.keys.enabled:
            return None
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        key = self.keys.lookup(header[7:].strip())
        if key is None:
            raise Unauthorized("invalid API key", code="invalid_api_key")
        request.state.key_id = key.id
        if scope is not None and scope not in key.scopes:
            raise Forbidden(f"key {key.id!r} lacks the {scope!r} scope this route needs (it has "
                            f"{sorted(key.scopes)})", code="insufficient_scope")
        if limit:
            wait = self.limiter.take(key.id, key.rate_per_s, key.burst)
            if wait > 0:
                raise RateLimited(f"rate limit of key {key.id!r} exceeded; retry in {wait:.2f} s",
                                  code="rate_limited", headers={"Retry-After": retry_after_header(wait)})
        return key

    def check_lengths(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """The max_tokens to use; 400 when the prompt or max_tokens is over its cap."""
        cfg = self.config
        if prompt_tokens > cfg.max_prompt_tokens:
            raise BadRequest(f"the prompt is {prompt_tokens} tokens long; this server's limit is "
                             f"{cfg.max_prompt_tokens}", param="prompt", code="prompt_too_long")
        if prompt_tokens == 0:
            raise BadRequest("the prompt is empty (0 tokens)", param="prompt", code="empty_prompt")
        chosen = cfg.default_max_tokens if max_tokens is None else max_tokens
        if chosen > cfg.max_tokens_cap:
            raise BadRequest(f"max_tokens={chosen} is over this server's cap of {cfg.max_tokens_cap}",
                             param="max_tokens", code="max_tokens_too_large")
        return chosen

    def close(self) -> None:
        self.batcher.stop()
        self.manager.close()
