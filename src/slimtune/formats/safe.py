"""Safe tensor and JSON file I/O: safetensors only (pickle files are refused, never opened), atomic writes
(temporary file, fsync, rename) so that a crash never leaves a half-written file under the real name."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from slimtune.errors import CorruptFileError, LoadError, UnsafeFormatError

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFormatError(
            f"{path} is a pickle-based file ({path.suffix}); slimtune never unpickles files because they can run "
            "code. Convert it to safetensors in a trusted environment (safetensors.torch.save_file)"
        )


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU, with a clear error for anything else."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise LoadError(f"no weights file at {path}")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
    if head[:2] in _PICKLE_MAGIC or head[:4] in _PICKLE_MAGIC:
        raise UnsafeFormatError(f"{path} holds pickle data under a safetensors name; refused, never unpickled")
    if len(head) < 8 or struct.unpack("<Q", head)[0] + 8 > size:
        raise CorruptFileError(f"{path} is truncated or not a safetensors file ({size} bytes); re-save or re-copy it")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise CorruptFileError(f"{path} is not a readable safetensors file: {exc}; re-save or re-copy it") from exc


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LoadError(f"{path} does not exist") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON: {exc}") from exc


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temporary sibling, fsync it, then rename it over ``path``; on error nothing is replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    with _suppress_oserror():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _suppress_oserror() -> contextlib.suppress:
    return contextlib.suppress(OSError)


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    # clone to break shared storage (tied weights), which safetensors refuses
    data = save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata=metadata)
    with atomic_file(path) as f:
        f.write(data)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
