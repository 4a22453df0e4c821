"""Whatever bytes a file holds, the reader and the scans give rows or a DataError, never another exception."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimtune.errors import DataError
from slimtune.governance import find_pii, redact_text, scan_dataset
from slimtune.governance.hashing import normalize
from slimtune.governance.reader import iter_rows

_PIECES = st.sampled_from([b'{"text": "', b'"}', b"\n", b"\r\n", b",", b'"', b"\xff", b"\xc3", b"\x00", b"\x1b[0m",
                           b"caf\xc3\xa9", b"a@b.co", b"10.0.0.1", b"{", b"}", b"[", b"text,label\n", b" "])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.lists(_PIECES, max_size=40).map(b"".join), suffix=st.sampled_from([".jsonl", ".csv", ".txt"]))
def test_any_bytes_give_rows_or_a_data_error(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f{suffix}"
        path.write_bytes(content)
        try:
            rows = list(iter_rows(path))
        except DataError as exc:
            assert str(path) in str(exc)  # the message names the file
            return
        report = scan_dataset([path], against=[path], licences="mit")
        assert report.manifests[0].rows == len(rows)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_pii_on_any_text(text: str) -> None:
    found = find_pii(text)
    assert all(0 <= f.start < f.end <= len(text) for f in found)
    assert all(a.end <= b.start for a, b in itertools.pairwise(found))
    once = redact_text(text)
    assert redact_text(once) == once  # redaction leaves nothing to redact
    normalize(text)
