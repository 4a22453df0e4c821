"""Fixtures of the training tests: a forkserver that imports torch, transformers and slimtune once, so that
each killed-and-resumed training process starts in well under a second."""

from __future__ import annotations

import multiprocessing as mp
import socket
from collections.abc import Iterator
from multiprocessing.context import BaseContext

import pytest


@pytest.fixture(scope="session")
def procs() -> Iterator[BaseContext]:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers.models.llama.modeling_llama", "tests.train.workers"])
    yield ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
