"""Mixed precision: bf16/fp16 autocast on CUDA (fp16 with a gradient scaler), plain float32 on CPU."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class Precision:
    """The autocast dtype (None: float32) and, for fp16, the gradient scaler."""

    device: torch.device
    dtype: torch.dtype | None = None
    scaler: Any = None

    @classmethod
    def choose(cls, name: str, device: torch.device) -> Precision:
        if device.type != "cuda":
            if name in ("bf16", "fp16"):
                log.info("precision=%s applies on CUDA only; training on %s in float32", name, device)
            return cls(device)
        if name == "auto":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if name == "bf16":
            return cls(device, torch.bfloat16)
        if name == "fp16":
            return cls(device, torch.float16, torch.amp.GradScaler("cuda"))
        return cls(device)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            yield

    @property
    def handles_overflow(self) -> bool:
        return self.scaler is not None

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        if self.scaler is None:
            return {}
        return {k: float(v) if isinstance(v, float) else v for k, v in self.scaler.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
