"""Dynamic batching: requests wait in a queue; one worker thread (all torch work happens there) takes up to
``max_batch`` of them, waiting at most ``max_wait_ms`` for more, and decodes them as ONE mixed-adapter batch.
Results and streamed text go back to the event loop through per-request asyncio queues."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slimtune.errors import SlimtuneError
from slimtune.serve.adapters import AdapterManager, Resolved
from slimtune.serve.drift import DriftMonitor
from slimtune.serve.errors import ApiError, Unavailable
from slimtune.serve.generation import GenResult, GenRow, generate_rows
from slimtune.serve.metrics import ServeMetrics
from slimtune.serve.profile import features_of, pooled_projections

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One admitted request: its prompt, decoding settings and the queue its events go to."""

    prompt_ids: list[int]
    target: Resolved
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    """("delta", text) while streaming; then ("done", (text, GenResult)) or ("error", ApiError)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)

    def send(self, kind: str, payload: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))


class _TextTracker:
    """Decodes a row's tokens as they come: finds stop strings, and streams only text that is final."""

    def __init__(self, job: Job, decode: Callable[[list[int]], str]) -> None:
        self.job, self.decode = job, decode
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.hold = max((len(s) for s in job.stop), default=1) - 1

    def __call__(self, token: int, logprob: float) -> bool:
        self.tokens.append(token)
        self.text = self.decode(self.tokens)
        cut = min((i for i in (self.text.find(s) for s in self.job.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            return True
        if self.job.cancelled.is_set():
            return True
        if self.job.stream:
            final = len(self.text) - self.hold  # a suffix that may begin a stop string is held back
            if self.text.endswith("\ufffd"):  # an incomplete multi-byte character
                final = min(final, len(self.text) - 1)
            if final > self.sent:
                self.job.send("delta", self.text[self.sent:final])
                self.sent = final
        return False

    def finish(self, result: GenResult) -> None:
        if self.job.stream and len(self.text) > self.sent:
            self.job.send("delta", self.text[self.sent:])
        if self.job.cancelled.is_set():
            result.finish_reason = "cancelled"
        self.job.send("done", (self.text, result))


class Batcher:
    """The queue and its worker thread; ``submit`` from the event loop, everything else runs in the thread."""

    def __init__(self, manager: AdapterManager, tokenizer: Any, metrics: ServeMetrics, monitor: DriftMonitor,
                 *, max_batch: int, max_wait_ms: float, max_queue: int, hidden_every: int = 1,
                 observers: list[Callable[[Resolved, float | None], None]] | None = None) -> None:
        self.manager, self.tokenizer, self.metrics, self.monitor = manager, tokenizer, metrics, monitor
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000.0
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.observers = observers or []
        self.hidden_every, self._batches = hidden_every, 0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stop_ids = frozenset({tokenizer.eos_token_id} - {None})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slimtune-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue a job; 503 when the queue is full."""
        try:
            self.queue.put_nowait(job)
        except queue.Full as exc:
            raise Unavailable(f"the server queue is full ({self.queue.maxsize} requests); retry shortly",
                              code="queue_full") from exc

    def _take(self) -> list[Job]:
        try:
            first = self.queue.get(timeout=0.05)
        except queue.Empty:
            return []
        batch, deadline = [first], time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return [j for j in batch if not j.cancelled.is_set()]

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._take()
            if not batch:
                continue
            try:
                self._run_batch(batch)
            except Exception as exc:  # a bug must fail these requests, never kill the worker
                log.exception("batch of %d failed", len(batch))
                for job in batch:
                    job.send("error", ApiError(f"internal error: {exc}", status=500, code="internal_error"))

    def _run_batch(self, batch: list[Job]) -> None:
        start = time.monotonic()
        self.metrics.batch_size.observe(len(batch))
        names = self.manager.ensure_loaded(j.target.ref for j in batch if j.target.ref is not None)
        ready: list[tuple[Job, str | None]] = []
        for job in batch:
            self.metrics.queue_time.observe(start - job.enqueued)
            got = names.get(job.target.ref) if job.target.ref is not None else None
            if isinstance(got, SlimtuneError):
                job.send("error", got)
            else:
                ready.append((job, got))
        for group, mixed in self._partition(ready):
            self._decode(group, mixed)

    def _partition(self, ready: list[tuple[Job, str | None]]) -> list[tuple[list[tuple[Job, str | None]], bool]]:
        """One mixed group for everything the core can mix; prompt/prefix adapters each run on their own."""
        mixed = [(j, n) for j, n in ready if not self.manager.is_input_adapter(n)]
        groups: list[tuple[list[tuple[Job, str | None]], bool]] = [(mixed, True)] if mixed else []
        apart: dict[str, list[tuple[Job, str | None]]] = {}
        for j, n in ready:
            if n is not None and self.manager.is_input_adapter(n):
                apart.setdefault(n, []).append((j, n))
        groups += [(g, False) for g in apart.values()]
        return groups

    def _decode(self, group: list[tuple[Job, str | None]], mixed: bool) -> None:
        model = self.manager.model
        trackers = [_TextTracker(j, self._decode_text) for j, _ in group]
        rows = [GenRow(j.prompt_ids, n, j.max_tokens, j.temperature, j.top_p, j.seed, self.stop_ids, t)
                for (j, n), t in zip(group, trackers, strict=True)]
        alone = group[0][1]
        if not mixed and alone is not None:
            model.set_active(alone)
        try:
            results = generate_rows(model, rows, self.pad_id, mixed=mixed)
        finally:
            if not mixed:
                model.set_active(())
        self._batches += 1
        proj = (pooled_projections(model, [j.prompt_ids for j, _ in group], self.pad_id).tolist()
                if self._batches % self.hidden_every == 0 else [[] for _ in group])
        for (job, _), tracker, result, projection in zip(group, trackers, results, proj, strict=True):
            feats = features_of(job.prompt_ids, projection, result)
            self.monitor.record(job.target.label, feats)
            self.metrics.tokens_out.labels(adapter=job.target.label).inc(len(result.token_ids))
            tracker.finish(result)
            self._notify(job.target, feats.mean_logprob)

    def _notify(self, target: Resolved, mean_logprob: float | None) -> None:
        for observe in self.observers:
            try:
                observe(target, mean_logprob)
            except Exception:  # a failing observer (monitoring, rollback) must never fail the requests
                log.exception("observer %r failed for %s", observe, target.label)

    def _decode_text(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))
