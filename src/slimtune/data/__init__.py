"""slimtune's data layer: load local files and embedded corpora, validate schemas, tokenize, pad and pack."""

from __future__ import annotations

from .collate import PackedCollator, PaddingCollator, block_causal_mask, to_additive
from .corpora import (
    Corpus,
    Provenance,
    Splits,
    chatterbot_qa,
    chatterbot_splits,
    hamlet,
    rotten_tomatoes,
    split_qa,
)
from .dataset import DataReport, DataSpec, build_dataset, collator_for, load_and_validate
from .loaders import load_rows
from .packing import pack_examples, packing_efficiency
from .records import BadRow, LoadResult, Row, Source
from .schemas import LabelMap, detect_schema, validate_rows
from .tokenize import IGNORE_INDEX, TokenizeOptions, assistant_spans, tokenize_rows

__all__ = [
    "IGNORE_INDEX", "BadRow", "Corpus", "DataReport", "DataSpec", "LabelMap", "LoadResult", "PackedCollator",
    "PaddingCollator", "Provenance", "Row", "Source", "Splits", "TokenizeOptions", "assistant_spans",
    "block_causal_mask", "build_dataset", "chatterbot_qa", "chatterbot_splits", "collator_for",
    "detect_schema", "hamlet", "load_and_validate", "load_rows", "pack_examples", "packing_efficiency",
    "rotten_tomatoes", "split_qa", "to_additive", "tokenize_rows", "validate_rows",
]
