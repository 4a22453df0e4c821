"""Row and bad-row records shared by the data layer: every row remembers the file and line it came from."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("slimtune.data")

#: How many bad rows are logged one by one before the rest are only counted.
LOG_BAD_ROWS_LIMIT = 20


@dataclass(frozen=True)
class Source:
    """Where a row came from: a file and a 1-based line (or record index, for Parquet and HF datasets)."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Row:
    """One raw or validated row: its fields and its source, kept for lineage."""

    data: dict[str, Any]
    source: Source


@dataclass(frozen=True)
class BadRow:
    """A row that could not be used, with the reason; loading goes on without it."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class LoadResult:
    """Rows read from one or more files, the rows refused, and the files read (path -> sha256)."""

    rows: list[Row] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def extend(self, other: LoadResult) -> None:
        self.rows.extend(other.rows)
        self.bad_rows.extend(other.bad_rows)
        self.files.update(other.files)


def log_bad_rows(bad_rows: Sequence[BadRow], what: str = "bad rows") -> None:
    """Log each bad row (up to a limit) and a summary line; never raises."""
    for bad in bad_rows[:LOG_BAD_ROWS_LIMIT]:
        logger.warning("%s", bad)
    if len(bad_rows) > LOG_BAD_ROWS_LIMIT:
        logger.warning("... and %d more %s", len(bad_rows) - LOG_BAD_ROWS_LIMIT, what)
