"""slimtune's trainer: AdamW over the trainable parameters, warm-up schedules, gradient accumulation and
clipping, autocast on CUDA, evaluation with early stopping, a NaN guard, crash-safe resumable checkpoints and
DDP / FSDP2 under torchrun. Small on purpose; everything else hooks in through callbacks.

    trainer = Trainer(model, TrainConfig(steps=100), train_data, collate_fn, run_dir=Path("runs/x"))
    result = trainer.fit()
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slimtune import kernels
from slimtune.core.model import AdaptedModel
from slimtune.errors import ConfigError, TrainingError
from slimtune.train.callbacks import Callback, MetricsWriter, TrainerState, tensorboard_if_available
from slimtune.train.checkpoint import CheckpointStore
from slimtune.train.config import TrainConfig
from slimtune.train.distributed import (
    Strategy,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    init_distributed,
    unwrap,
    wrap,
)
from slimtune.train.evaluate import evaluate_model, forward_loss, target_count
from slimtune.train.optim import ParamGroupFn, build_optimizer, named_trainable
from slimtune.train.order import BatchOrder, DataPosition, micro_batches
from slimtune.train.precision import Precision
from slimtune.train.progress import default_progress
from slimtune.train.resume import capture, restore
from slimtune.train.schedule import Schedule
from slimtune.train.summary import peak_memory, reset_peak_memory, write_summary

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]
#: loss_fn(model, batch) -> the mean loss over the batch's targets (weighted by target_count across batches)
LossFn = Callable[[nn.Module, Batch], Tensor]


@dataclass
class TrainResult:
    """What a finished ``fit`` reports."""

    steps: int
    losses: list[float | None]
    """Per-step training loss (token-weighted over the global batch); None where it was not finite."""
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    tokens_seen: int = 0
    wall_time: float = 0.0
    """Seconds spent in this process's fit() (a resumed run counts from the resume)."""
    peak_memory: int = 0
    """Bytes: peak CUDA memory allocated on this device, else the peak resident set size, over this fit where
    the platform can reset the peak (see slimtune.train.summary)."""
    stopped_reason: str = "max_steps"
    """"max_steps", "early_stopping" or "already_complete"."""
    resumed_from: int | None = None
    adapter_dir: Path | None = None
    """RUN/adapter when the run saved an adapter (or a plain module's trainable tensors) there."""
    model_dir: Path | None = None
    """RUN/model when the run saved a whole transformers model (full fine-tuning)."""
    tokens_trained: int = 0
    """Non-padding tokens trained on in this process (tokens_seen counts a resumed run's earlier steps too)."""
    loop_seconds: float = 0.0
    """Seconds this process spent in the training loop."""
    tokens_per_s: float = 0.0
    """tokens_trained / loop_seconds."""
    evaluation: dict[str, dict[str, float]] | None = None
    """{set: {metric: value}} of the post-training evaluation, when ``run_recipe`` ran one (recipe ``eval:``)."""


@dataclass
class _Progress:
    """Mutable run state that a checkpoint carries besides tensors."""

    position: DataPosition = field(default_factory=DataPosition)
    losses: list[float | None] = field(default_factory=list)
    tokens_seen: int = 0
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    best_eval: float | None = None
    bad_evals: int = 0
    nan_streak: int = 0
    stopped: str | None = None
    """Why an earlier fit stopped before max_steps (early stopping); a resume then does not train on."""

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position.to_dict(), "losses": self.losses, "tokens_seen": self.tokens_seen,
                "eval_history": self.eval_history, "best_eval": self.best_eval, "bad_evals": self.bad_evals,
                "nan_streak": self.nan_streak, "stopped": self.stopped}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Progress:
        return cls(DataPosition.from_dict(data["position"]), list(data["losses"]), int(data["tokens_seen"]),
                   list(data["eval_history"]), data["best_eval"], int(data["bad_evals"]), int(data["nan_streak"]),
                   data.get("stopped"))


class Trainer:
    """Trains ``model`` (an AdaptedModel or any module whose ``requires_grad`` parameters should train).

    ``train_data`` is any indexable sequence of examples (e.g. dicts of 1-D token tensors or lists) and
    ``collate_fn`` turns a list of them into a batch of tensors the model takes (with ``labels``).
    ``param_groups`` replaces the optimizer grouping, ``strategy`` picks DDP or FSDP2 under torchrun, and
    ``lineage`` is recorded in the final adapter's slimtune.json (the recipe, dataset manifests).
    With a ``run_dir`` the trainer writes metrics.jsonl, checkpoints, the final adapter (RUN/adapter) or, for a
    transformers model trained without an adapter, the whole model (RUN/model), and RUN/train_result.json;
    ``checkpoints=False`` writes no checkpoint at all, not even the final one (a run never resumed, such as
    an ablation cell).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_data: Sequence[Any],
                 collate_fn: Callable[[list[Any]], Batch], eval_data: Mapping[str, Sequence[Any]] | None = None,
                 run_dir: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), loss_fn: LossFn | None = None, *,
                 param_groups: ParamGroupFn | None = None, strategy: Strategy = "ddp",
                 lineage: dict[str, Any] | None = None, device: str | torch.device | None = None,
                 checkpoints: bool = True) -> None:
        if not isinstance(config, TrainConfig):
            raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
        if config.checkpoint_every and run_dir is None:
            raise ConfigError(f"checkpoint_every={config.checkpoint_every} needs a run_dir to write checkpoints into")
        if config.checkpoint_every and not checkpoints:
            raise ConfigError(f"checkpoint_every={config.checkpoint_every} contradicts checkpoints=False")
        self.config, self.train_data, self.collate_fn = config, train_data, collate_fn
        self.eval_data = dict(eval_data or {})
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.loss_fn, self.lineage = loss_fn, dict(lineage or {})
        self.env = init_distributed(device)
        self.precision = Precision.choose(config.precision, self.env.device)
        self.module = model.to(self.env.device)  # the user's module (FSDP2 shards it in place)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.module)
        self.model = wrap(self.module, self.env, strategy)
        self.compiled_blocks = compile_model(self.module, config.compile, self.env.device, self.env.world_size)
        self.strategy = strategy
        self.optimizer = build_optimizer(self.module, config, param_groups)
        self.global_batch = config.batch_size * config.grad_accum * self.env.world_size
        self.order = BatchOrder(len(train_data), self.global_batch, config.seed)
        self.max_steps = config.steps or max(1, int((config.epochs or 1) * self.order.steps_per_epoch))
        self.schedule = Schedule(self.optimizer, self.max_steps, config.warmup_for(self.max_steps), config.schedule)
        self.store = (CheckpointStore(self.run_dir / "checkpoints", config.keep_last)
                      if self.run_dir is not None and checkpoints else None)
        self.callbacks = self._callbacks(callbacks)
        self.progress = _Progress()
        self.state = TrainerState(max_steps=self.max_steps, run_dir=self.run_dir)
        self._saved_step: int | None = None
        self._saved: dict[str, Path] = {}

    def _callbacks(self, extra: Sequence[Callback]) -> list[Callback]:
        if not self.env.is_main:
            return []
        found: list[Callback | None] = [default_progress(self.config.log_every)]
        if self.run_dir is not None:
            found += [MetricsWriter(self.run_dir), tensorboard_if_available(self.run_dir)]
        return [c for c in found if c is not None] + list(extra)

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self.state, *args)

    # ----- the loop --------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to ``max_steps`` (resuming from the newest complete checkpoint in run_dir, if any)."""
        started = time.perf_counter()
        scope = reset_peak_memory(self.env.device)
        resumed = self._resume_or_seed()
        self.state.step = self.state.start_step = self.schedule.step_index
        self._sync_state()
        self._emit("on_train_begin")
        done = self.state.step >= self.max_steps or self.progress.stopped is not None
        reason = self.progress.stopped or ("already_complete" if done else "max_steps")
        tokens_before, loop_started = self.progress.tokens_seen, time.perf_counter()
        try:
            while not done and self.state.step < self.max_steps:
                metrics = self._train_step(started)
                self._emit("on_step_end", metrics)
                if self._maybe_evaluate():
                    reason = self.progress.stopped = "early_stopping"
                    break
                if self.config.checkpoint_every and self.state.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
            loop_seconds = time.perf_counter() - loop_started
            self._finish()
        finally:
            self._emit("on_train_end")
        trained = self.progress.tokens_seen - tokens_before
        result = TrainResult(steps=self.state.step, losses=list(self.progress.losses),
                             eval_history=list(self.progress.eval_history), tokens_seen=self.progress.tokens_seen,
                             wall_time=time.perf_counter() - started, peak_memory=peak_memory(self.env.device),
                             stopped_reason=reason, resumed_from=resumed, adapter_dir=self._saved.get("adapter"),
                             model_dir=self._saved.get("model"), tokens_trained=trained, loop_seconds=loop_seconds,
                             tokens_per_s=trained / loop_seconds if trained and loop_seconds > 0 else 0.0)
        if self.run_dir is not None and self.env.is_main:
            write_summary(self.run_dir, result, self.env.device, self.env.world_size, scope)
        return result

    def _resume_or_seed(self) -> int | None:
        found = self.store.latest() if self.store and self.env.is_main else None
        if self.store and self.env.is_main:
            self.store.clean_incomplete()
        latest = all_gather_objects(found, self.env)[0]  # rank 0 decides, so every rank does the same
        if latest is None or self.store is None:
            seed_everything(self.config.seed + self.env.rank)
            return None
        data = self.store.load(latest)
        restore(data, self.module, self.optimizer, self.schedule, self.env)
        self.progress = _Progress.from_dict(data.state)
        self.precision.load_state_dict(data.state.get("scaler") or {})
        self.order.position = self.progress.position
        if int(data.state.get("global_batch", self.global_batch)) != self.global_batch:
            log.warning("resuming with a global batch of %d; the checkpoint was written with %s",
                        self.global_batch, data.state.get("global_batch"))
        log.info("resumed from %s (step %d)", latest, data.step)
        self._saved_step = data.step
        return data.step

    def _sync_state(self) -> None:
        self.state.losses, self.state.eval_history = self.progress.losses, self.progress.eval_history
        self.state.tokens_seen, self.state.epoch = self.progress.tokens_seen, self.order.position.epoch

    def _train_step(self, started: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        cfg, env = self.config, self.env
        indices = self.order.next_global()
        batches = [self._to_device(self.collate_fn([self.train_data[i] for i in part]))
                   for part in micro_batches(indices, cfg.batch_size, cfg.grad_accum, env.rank, env.world_size)]
        counts = [target_count(b) for b in batches]
        totals = all_reduce_sum(torch.tensor([float(sum(counts)), float(sum(_tokens(b) for b in batches))]), env)
        total_targets, tokens = float(totals[0]), int(totals[1])
        self.model.train()
        loss_sum = self._accumulate(batches, counts, total_targets)
        loss = float(all_reduce_sum(loss_sum.reshape(1), env)[0]) / max(total_targets, 1.0)
        lr = self.schedule.last_lr
        grad_norm = self._clip()
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        self._apply_update(skipped, loss_finite=math.isfinite(loss))
        self.schedule.step()
        self.progress.position = self.order.position
        self.progress.tokens_seen += tokens
        recorded = loss if math.isfinite(loss) else None  # a finite loss with overflowing grads is still shown
        self.progress.losses.append(recorded)
        self.state.step += 1
        self._sync_state()
        elapsed = time.perf_counter() - t0
        return {"step": self.state.step, "loss": recorded, "lr": lr,
                "grad_norm": grad_norm if math.isfinite(grad_norm) else None, "tokens": self.progress.tokens_seen,
                "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0, "time": time.perf_counter() - started,
                "epoch": self.order.position.epoch, "skipped": skipped}

    def _accumulate(self, batches: list[Batch], counts: list[int], total_targets: float) -> Tensor:
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.env.device)
        for k, (batch, count) in enumerate(zip(batches, counts, strict=True)):
            last = k == len(batches) - 1
            no_sync: Any = getattr(self.model, "no_sync", None)
            sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
            with sync:
                with self.precision.autocast():
                    loss = forward_loss(self.model, batch, self.loss_fn, direct=not self.env.distributed)
                # DDP and FSDP average gradients over ranks; this weighting makes the result the token mean
                scaled = loss * (count * self.env.world_size / max(total_targets, 1.0))
                self.precision.backward(scaled)
            loss_sum += loss.detach().double() * count
        return loss_sum

    def _clip(self) -> float:
        params = [p for _, p in named_trainable(self.module)]
        self.precision.unscale(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm or float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def _apply_update(self, skipped: bool, loss_finite: bool) -> None:
        if skipped and (loss_finite and self.precision.handles_overflow):
            self.precision.step(self.optimizer)  # fp16 overflow: the grad scaler skips and lowers its scale
        elif skipped:
            self.progress.nan_streak += 1
            log.warning("step %d: non-finite loss or gradient; update skipped (%d in a row)",
                        self.state.step + 1, self.progress.nan_streak)
            if self.progress.nan_streak > self.config.nan_guard:
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingError(
                    f"{self.progress.nan_streak} consecutive steps had a non-finite loss or gradient (nan_guard="
                    f"{self.config.nan_guard}); last finite checkpoint is kept. Lower lr, check the data, or use fp32")
        else:
            self.progress.nan_streak = 0
            self.precision.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)

    def _to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.env.device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}

    # ----- evaluation, checkpoints, the end -------------------------------------------------------------
    def evaluate(self, data: Sequence[Any]) -> dict[str, float]:
        """Token-weighted mean loss and perplexity of ``data`` (in order, batch_size examples per batch)."""
        shard = self.strategy != "fsdp2"  # FSDP2 forwards are collectives: every rank runs every batch
        return evaluate_model(self.model if not shard else unwrap(self.model), data, self.collate_fn,
                              self.config.batch_size, self.env, self.precision, self.loss_fn, self._to_device,
                              shard=shard, direct=shard)

    def _maybe_evaluate(self) -> bool:
        """Evaluate when due; True when early stopping says stop."""
        step, every = self.state.step, self.config.eval_every
        if not self.eval_data or not ((every and step % every == 0) or step == self.max_steps):
            return False
        record: dict[str, Any] = {"step": step}
        for name, data in self.eval_data.items():
            for key, value in self.evaluate(data).items():
                record[f"{name}/{key}"] = value
        self.progress.eval_history.append(record)
        self._emit("on_eval", record)
        monitored = record[f"{next(iter(self.eval_data))}/loss"]
        if self.progress.best_eval is None or monitored < self.progress.best_eval:
            self.progress.best_eval, self.progress.bad_evals = monitored, 0
        else:
            self.progress.bad_evals += 1
        patience = self.config.early_stopping_patience
        return patience is not None and self.progress.bad_evals >= patience

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; every rank must call this)."""
        if self.store is None:
            raise ConfigError("checkpoint_every needs a run_dir to write checkpoints into")
        state = {**self.progress.to_dict(), "global_batch": self.global_batch, "world_size": self.env.world_size,
                 "scaler": self.precision.state_dict(), "config": self.config.to_dict()}
        self._emit("before_save")
        data = capture(self.module, self.optimizer, self.schedule, self.state.step, state, self.env)
        path = self.store.save(data) if self.env.is_main else None
        self._saved_step = self.state.step
        barrier(self.env)
        if path is not None:
            self._emit("on_save", path)
        return path

    def _finish(self) -> None:
        if self.run_dir is None:
            return
        if self.store is not None and self._saved_step != self.state.step:
            self.save_checkpoint()
        from slimtune.train.export import save_final

        metrics = {"train_loss": next((x for x in reversed(self.progress.losses) if x is not None), None),
                   **({k: v for k, v in self.progress.eval_history[-1].items()} if self.progress.eval_history else {})}
        lineage = {"seed": self.config.seed, "metrics": metrics, "train": self.config.to_dict(),
                   "steps": self.state.step, "tokens_seen": self.progress.tokens_seen, **self.lineage}
        saved = save_final(self.module, self.run_dir, lineage, self.env)
        self._saved = {saved.kind: saved.path}
        if self.env.is_main:
            self._emit("on_save", saved.path)


def compile_model(model: nn.Module, choice: bool | None, device: torch.device, world_size: int) -> int:
    """``TrainConfig.compile``: compile the model's transformer blocks in place (after any wrapping) when
    asked, or in auto (None) on a single-process CUDA run with Triton installed; returns how many blocks."""
    if choice is None:
        choice = device.type == "cuda" and world_size == 1 and importlib.util.find_spec("triton") is not None
    if not choice:
        return 0
    # every block shares one traced graph per variant (input requiring grad or not, train or eval, static then
    # dynamic length); past Dynamo's recompile limit (8 per code object and process) new variants run eagerly
    count = kernels.compile_blocks(model, dynamic=None)  # shapes go dynamic after the first new length
    if count == 0:
        log.info("train.compile: no transformer blocks (*DecoderLayer) found; nothing compiled")
    else:
        log.info("train.compile: %d transformer blocks go through torch.compile", count)
    return count


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing on the transformers model inside ``model``."""
    inner: Any = getattr(model, "model", model) if isinstance(model, AdaptedModel) else model
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(inner, "gradient_checkpointing_enable"):
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ConfigError(f"gradient_checkpointing=True but {type(inner).__name__} has no "
                          "activation_checkpointing_enable(); use a transformers model or turn it off")
    if getattr(getattr(inner, "config", None), "use_cache", False):
        inner.config.use_cache = False  # a KV cache is useless in training and conflicts with recomputation


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _tokens(batch: Batch) -> int:
    mask = batch.get("attention_mask")
    if isinstance(mask, Tensor) and mask.ndim == 2:  # a packed batch's 4-D mask does not count tokens
        return int(mask.sum())
    ids = batch.get("input_ids")
    return int(ids.numel()) if isinstance(ids, Tensor) else 0
