"""Licence compatibility: each dataset's licence against the base model's licence and the intended use,
giving ok / warn / block with a reason. An unknown licence is flagged (warn or block, by policy), never
assumed fine.

This is an engineering aid that encodes the common reading of each licence, not legal advice; the reasons
say which clause drives each verdict so that a person can check it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Level = Literal["ok", "warn", "block"]
Use = Literal["commercial", "non-commercial"]
Family = Literal["permissive", "attribution", "share-alike", "non-commercial", "nc-share-alike",
                 "no-derivatives", "copyleft", "weak-copyleft", "restricted", "unknown"]
_RANK: dict[Level, int] = {"ok": 0, "warn": 1, "block": 2}

#: SPDX id (or Hugging Face hub licence tag) -> family. Keys are lower case.
FAMILIES: dict[str, Family] = {
    **dict.fromkeys(["mit", "mit-0", "bsd-2-clause", "bsd-3-clause", "bsd", "apache-2.0", "isc", "zlib",
                     "unlicense", "cc0-1.0", "pddl-1.0", "0bsd", "bsl-1.0", "psf-2.0", "python-2.0"],
                    "permissive"),
    **dict.fromkeys(["cc-by-4.0", "cc-by-3.0", "cc-by-2.0", "odc-by-1.0", "odc-by", "cdla-permissive-2.0",
                     "cdla-permissive-1.0"], "attribution"),
    **dict.fromkeys(["cc-by-sa-4.0", "cc-by-sa-3.0", "odbl-1.0", "odbl", "cdla-sharing-1.0"], "share-alike"),
    **dict.fromkeys(["cc-by-nc-4.0", "cc-by-nc-3.0", "cc-by-nc-2.0"], "non-commercial"),
    **dict.fromkeys(["cc-by-nc-sa-4.0", "cc-by-nc-sa-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-nd-3.0"],
                    "nc-share-alike"),
    **dict.fromkeys(["cc-by-nd-4.0", "cc-by-nd-3.0"], "no-derivatives"),
    **dict.fromkeys(["gpl-2.0", "gpl-3.0", "gpl-2.0-only", "gpl-3.0-only", "gpl-2.0-or-later", "gpl-3.0-or-later",
                     "agpl-3.0", "agpl-3.0-only", "agpl-3.0-or-later"], "copyleft"),
    **dict.fromkeys(["lgpl-2.1", "lgpl-3.0", "lgpl-2.1-only", "lgpl-3.0-only", "lgpl-2.1-or-later",
                     "lgpl-3.0-or-later", "mpl-2.0", "epl-2.0"], "weak-copyleft"),
    **dict.fromkeys(["other", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma",
                     "openrail", "openrail++", "creativeml-openrail-m", "bigscience-openrail-m",
                     "bigscience-bloom-rail-1.0", "deepseek", "qwen"], "restricted"),
    **dict.fromkeys(["unknown", "noassertion", "none", "proprietary", ""], "unknown"),
}

_ALIASES: dict[str, str] = {
    "apache 2.0": "apache-2.0", "apache license 2.0": "apache-2.0", "apache license, version 2.0": "apache-2.0",
    "apache software license": "apache-2.0", "apache": "apache-2.0", "apache2": "apache-2.0",
    "mit license": "mit", "bsd license": "bsd", "new bsd license": "bsd-3-clause",
    "simplified bsd license": "bsd-2-clause", "isc license": "isc", "isc license (iscl)": "isc",
    "public domain": "cc0-1.0", "cc0": "cc0-1.0", "gplv3": "gpl-3.0", "gplv2": "gpl-2.0",
    "gnu general public license v3 (gplv3)": "gpl-3.0", "gnu general public license v2 (gplv2)": "gpl-2.0",
    "gnu lesser general public license v3 (lgplv3)": "lgpl-3.0", "lgplv3": "lgpl-3.0", "lgpl": "lgpl-3.0",
    "gnu lesser general public license v2 or later (lgplv2+)": "lgpl-2.1-or-later",
    "mozilla public license 2.0 (mpl 2.0)": "mpl-2.0", "the unlicense (unlicense)": "unlicense",
    "python software foundation license": "psf-2.0",
}


def normalize_licence(value: str | None) -> str:
    """A licence string as a lower-case SPDX id or hub tag (aliases and trove classifiers mapped); 'unknown'
    when empty."""
    if value is None:
        return "unknown"
    text = value.strip()
    if text.startswith("License ::"):
        text = text.split("::")[-1].strip()
    low = re.sub(r"\s+", " ", text.lower())
    for op in (" or ", " and "):  # an SPDX expression: normalise each operand, keep the operator
        if op in low:
            return op.join(normalize_licence(part.strip("() ")) for part in low.split(op))
    return _ALIASES.get(low, low.replace(" ", "-")) or "unknown"


def family(licence: str | None) -> Family:
    """The family of a licence; anything not in the table is 'unknown' (flagged, never assumed fine)."""
    return FAMILIES.get(normalize_licence(licence), "unknown")


@dataclass(frozen=True)
class LicenceVerdict:
    """The verdict on one dataset licence for one base model and use."""

    level: Level
    reason: str
    dataset_licence: str
    model_licence: str
    use: Use

    def to_dict(self) -> dict[str, str]:
        return {"level": self.level, "reason": self.reason, "dataset_licence": self.dataset_licence,
                "model_licence": self.model_licence, "use": self.use}


#: (dataset family, use) -> (level, reason) before the base model's licence is considered.
_DATA_RULES: dict[tuple[Family, Use], tuple[Level, str]] = {
    **{(f, u): ("ok", "permissive licence") for f in ("permissive",) for u in ("commercial", "non-commercial")},
    **{(f, u): ("ok", "attribution required: credit the dataset in the adapter card")
       for f in ("attribution",) for u in ("commercial", "non-commercial")},
    **{(f, u): ("warn", "share-alike: if the adapter counts as an adaptation it must carry the same licence")
       for f in ("share-alike",) for u in ("commercial", "non-commercial")},
    ("non-commercial", "commercial"): ("block", "non-commercial licence forbids commercial use"),
    ("non-commercial", "non-commercial"): ("ok", "non-commercial licence, non-commercial use"),
    ("nc-share-alike", "commercial"): ("block", "non-commercial licence forbids commercial use"),
    ("nc-share-alike", "non-commercial"):
        ("warn", "non-commercial share-alike: the adapter may have to carry the same licence"),
    **{("no-derivatives", u): ("warn", "no-derivatives: training may create an adaptation the licence forbids")
       for u in ("commercial", "non-commercial")},
    **{("copyleft", u): ("warn", "copyleft: distributing the adapter may oblige you to release it under the GPL")
       for u in ("commercial", "non-commercial")},
    **{("weak-copyleft", u): ("warn", "weak copyleft: keep the licence notice and changes to the data public")
       for u in ("commercial", "non-commercial")},
    **{("restricted", u): ("warn", "licence with use restrictions: read its terms before use")
       for u in ("commercial", "non-commercial")},
}


def _model_rule(model_family: Family, use: Use) -> tuple[Level, str]:
    if model_family in ("permissive", "attribution"):
        return "ok", "base model licence is permissive"
    if model_family in ("non-commercial", "nc-share-alike"):
        return ("block", "base model licence forbids commercial use") if use == "commercial" else (
            "ok", "base model is non-commercial, use is non-commercial")
    if model_family == "restricted":
        return ("warn", "base model licence ('other'/Llama-style) adds use conditions: read them") if (
            use == "commercial") else ("ok", "base model licence allows research use")
    return "warn", f"base model licence is {model_family}: check its terms"


def _worst(*verdicts: tuple[Level, str]) -> tuple[Level, str]:
    level = max((v[0] for v in verdicts), key=_RANK.__getitem__)
    return level, "; ".join(r for lv, r in verdicts if lv == level)


def _single(dataset: str, model: str, use: Use, unknown: Level) -> tuple[Level, str]:
    data_family, model_family = family(dataset), family(model)
    data_rule: tuple[Level, str] = (unknown, f"dataset licence '{dataset}' is unknown: find it or declare it") if (
        data_family == "unknown") else _DATA_RULES[(data_family, use)]
    model_rule: tuple[Level, str] = (unknown, f"base model licence '{model}' is unknown") if (
        model_family == "unknown") else _model_rule(model_family, use)
    combined = [data_rule, model_rule]
    if data_family in ("share-alike", "nc-share-alike") and model_family == "restricted":
        combined.append(("warn", "share-alike data with a restricted base model: the two sets of terms conflict"))
    return _worst(*combined)


def check_licence(dataset_licence: str | None, model_licence: str | None, use: Use = "commercial",
                  *, unknown: Level = "warn") -> LicenceVerdict:
    """The verdict for one dataset licence (an SPDX id or simple expression with OR / AND)."""
    if use not in ("commercial", "non-commercial"):
        raise ValueError(f"use={use!r}: expected 'commercial' or 'non-commercial'")
    data = normalize_licence(dataset_licence)
    model = normalize_licence(model_licence)
    if " or " in data:  # the licensee may choose: the best option counts
        options = [_single(d.strip("() "), model, use, unknown) for d in data.split(" or ")]
        level, reason = min(options, key=lambda v: _RANK[v[0]])
    elif " and " in data:  # all apply: the worst counts
        level, reason = _worst(*(_single(d.strip("() "), model, use, unknown) for d in data.split(" and ")))
    else:
        level, reason = _single(data, model, use, unknown)
    return LicenceVerdict(level, reason, data, model, use)


def worst(verdicts: list[LicenceVerdict]) -> Level:
    """The most severe level among ``verdicts`` ('ok' for none)."""
    return max((v.level for v in verdicts), key=_RANK.__getitem__, default="ok")


_TEXT_SIGNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cc-by-nc-sa-4.0", ("attribution-noncommercial-sharealike 4.0",)),
    ("cc-by-nc-nd-4.0", ("attribution-noncommercial-noderivatives 4.0",)),
    ("cc-by-nc-4.0", ("attribution-noncommercial 4.0",)),
    ("cc-by-sa-4.0", ("attribution-sharealike 4.0",)),
    ("cc-by-nd-4.0", ("attribution-noderivatives 4.0",)),
    ("cc-by-4.0", ("creative commons attribution 4.0",)),
    ("cc0-1.0", ("cc0 1.0 universal",)),
    ("agpl-3.0", ("gnu affero general public license",)),
    ("lgpl-3.0", ("gnu lesser general public license", "version 3")),
    ("lgpl-2.1", ("gnu lesser general public license", "version 2.1")),
    ("gpl-3.0", ("gnu general public license", "version 3")),
    ("gpl-2.0", ("gnu general public license", "version 2")),
    ("apache-2.0", ("apache license", "version 2.0")),
    ("mit", ("permission is hereby granted, free of charge",)),
    ("bsd-3-clause", ("redistribution and use in source and binary forms", "neither the name")),
    ("bsd-2-clause", ("redistribution and use in source and binary forms",)),
    ("unlicense", ("this is free and unencumbered software",)),
)


def identify_licence_text(text: str) -> str | None:
    """The SPDX id of a licence file's text, from phrases each licence is known by; None when none fits."""
    low = re.sub(r"\s+", " ", text.lower())
    for spdx, signs in _TEXT_SIGNS:
        if all(s in low for s in signs):
            return spdx
    return None
