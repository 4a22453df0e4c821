"""OpenAI-shaped request bodies (validated by pydantic) and response / stream-chunk builders."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slimtune.serve.generation import GenResult


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > 4 or any(not s for s in items):
            raise ValueError("stop must be a non-empty string or a list of at most 4 non-empty strings")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"this server takes one prompt per request, got a list of {len(value)}")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)


class RollbackRequest(BaseModel):
    """``POST /admin/rollback``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    alias: str = Field(min_length=1, max_length=64)
    reason: str | None = Field(default=None, max_length=1000)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _usage(prompt_tokens: int, result: GenResult) -> dict[str, int]:
    out = len(result.token_ids)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": out, "total_tokens": prompt_tokens + out}


def _finish(result: GenResult) -> str:
    return "stop" if result.finish_reason in ("stop", "cancelled") else "length"


def completion_body(rid: str, model: str, text: str, result: GenResult, prompt_tokens: int) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": _finish(result)}],
            "usage": _usage(prompt_tokens, result)}


def chat_body(rid: str, model: str, text: str, result: GenResult, prompt_tokens: int) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": _finish(result)}],
            "usage": _usage(prompt_tokens, result)}


def chunk(rid: str, model: str, chat: bool, delta: str | None, result: GenResult | None = None,
          first: bool = False) -> str:
    """One server-sent event: ``data: {...}\\n\\n``; ``result`` marks the last chunk (finish_reason set)."""
    finish = _finish(result) if result is not None else None
    if chat:
        d: dict[str, Any] = {"role": "assistant"} if first else {}
        if delta:
            d["content"] = delta
        body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}
    else:
        body = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


DONE = "data: [DONE]\n\n"
