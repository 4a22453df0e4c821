"""The licence matrix (dataset x base model x use), normalisation, and detection near a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimtune.governance import check_licence, detect_licence
from slimtune.governance.licences import identify_licence_text, normalize_licence

MATRIX = [
    # dataset, model, use, expected level, a word the reason must contain
    ("MIT", "apache-2.0", "commercial", "ok", "permissive"),
    ("BSD-2-Clause", "mit", "commercial", "ok", "permissive"),
    ("BSD-3-Clause", "apache-2.0", "non-commercial", "ok", "permissive"),
    ("Apache-2.0", "apache-2.0", "commercial", "ok", "permissive"),
    ("CC0-1.0", "mit", "commercial", "ok", "permissive"),
    ("CC-BY-4.0", "apache-2.0", "commercial", "ok", "attribution"),
    ("CC-BY-SA-4.0", "apache-2.0", "commercial", "warn", "share-alike"),
    ("CC-BY-SA-4.0", "llama3", "non-commercial", "warn", "conflict"),
    ("CC-BY-NC-4.0", "apache-2.0", "commercial", "block", "non-commercial"),
    ("CC-BY-NC-4.0", "apache-2.0", "non-commercial", "ok", "non-commercial"),
    ("CC-BY-NC-SA-4.0", "mit", "commercial", "block", "non-commercial"),
    ("CC-BY-NC-SA-4.0", "mit", "non-commercial", "warn", "share-alike"),
    ("GPL-3.0", "apache-2.0", "commercial", "warn", "copyleft"),
    ("LGPL-3.0", "apache-2.0", "commercial", "warn", "copyleft"),
    ("LGPL-2.1-or-later", "mit", "non-commercial", "warn", "copyleft"),
    (None, "apache-2.0", "commercial", "warn", "unknown"),
    ("NOASSERTION", "apache-2.0", "non-commercial", "warn", "unknown"),
    ("my-own-terms", "apache-2.0", "commercial", "warn", "unknown"),
    ("MIT", "other", "commercial", "warn", "conditions"),
    ("MIT", "llama3.1", "non-commercial", "ok", "research"),
    ("MIT", None, "commercial", "warn", "unknown"),
    ("CC-BY-NC-4.0", "llama2", "commercial", "block", "non-commercial"),
    ("MIT OR GPL-3.0", "apache-2.0", "commercial", "ok", "permissive"),
    ("MIT AND CC-BY-NC-4.0", "apache-2.0", "commercial", "block", "non-commercial"),
]


@pytest.mark.parametrize(("data", "model", "use", "level", "word"), MATRIX)
def test_matrix(data: str | None, model: str | None, use: str, level: str, word: str) -> None:
    verdict = check_licence(data, model, use)  # type: ignore[arg-type]
    assert verdict.level == level, verdict
    assert word in verdict.reason


def test_unknown_can_block_by_policy() -> None:
    assert check_licence("unknown", "apache-2.0", unknown="block").level == "block"
    assert check_licence("mit", "mystery-licence", unknown="block").level == "block"
    with pytest.raises(ValueError, match="use="):
        check_licence("mit", "mit", "sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize(("raw", "spdx"), [
    ("Apache 2.0", "apache-2.0"), ("License :: OSI Approved :: MIT License", "mit"), ("  CC-BY-4.0 ", "cc-by-4.0"),
    ("", "unknown"), (None, "unknown"), ("BSD License", "bsd"),
])
def test_normalisation(raw: str | None, spdx: str) -> None:
    assert normalize_licence(raw) == spdx


def test_detection_from_files_and_packages(tmp_path: Path) -> None:
    data = tmp_path / "corpus" / "sub" / "d.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text('{"text": "x"}\n')
    assert detect_licence(data) == ("unknown", "not found")
    (tmp_path / "corpus" / "LICENSE").write_text("MIT License\n\nPermission is hereby granted, free of charge, ...")
    spdx, source = detect_licence(data)
    assert spdx == "mit" and source.endswith("corpus/LICENSE")
    card = tmp_path / "hub" / "README.md"
    card.parent.mkdir()
    card.write_text("---\nlicense: cc-by-sa-4.0\npretty_name: x\n---\n# data\n")
    (tmp_path / "hub" / "t.csv").write_text("text\nx\n")
    assert detect_licence(tmp_path / "hub" / "t.csv")[0] == "cc-by-sa-4.0"
    site = tmp_path / "lib" / "site-packages"
    (site / "somedata" / "files").mkdir(parents=True)
    (site / "somedata" / "files" / "a.txt").write_text("hello\n")
    info = site / "somedata-1.0.dist-info"
    info.mkdir()
    (info / "top_level.txt").write_text("somedata\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: somedata\nClassifier: License :: OSI Approved :: "
                                   "BSD License\n")
    assert detect_licence(site / "somedata" / "files" / "a.txt") == ("bsd", "package metadata somedata-1.0")


def test_licence_text_identification() -> None:
    assert identify_licence_text("Apache License\nVersion 2.0, January 2004") == "apache-2.0"
    assert identify_licence_text("GNU LESSER GENERAL PUBLIC LICENSE Version 3, 29 June 2007") == "lgpl-3.0"
    assert identify_licence_text("Attribution-NonCommercial-ShareAlike 4.0 International") == "cc-by-nc-sa-4.0"
    assert identify_licence_text("all rights reserved") is None
