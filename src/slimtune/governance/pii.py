"""Personal data and secrets in training text: e-mail addresses, phone numbers, card numbers (Luhn-checked),
IP addresses, and keys in common token formats; counted per kind with masked examples, and redacted.

Every pattern is paired with a validator, because the cost of a false positive (a version number taken for
an IP address, sixteen digits taken for a card) is that users learn to ignore the report.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from slimtune.governance.reader import BadBytes, iter_texts

PathLike = str | os.PathLike[str]


def luhn_ok(digits: str) -> bool:
    """True when a digit string passes the Luhn checksum of payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text``'s own character distribution."""
    if not text:
        return 0.0
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def _card_ok(m: re.Match[str]) -> bool:
    digits = re.sub(r"[ -]", "", m.group(0))
    # 13-19 digits, an issuer's first digit (2 Mastercard, 3 Amex/JCB/Diners, 4 Visa, 5 Mastercard, 6 others)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1 and luhn_ok(digits)


def _ipv4_ok(m: re.Match[str]) -> bool:
    parts = m.group(0).split(".")
    # leading zeros ("01.02.03.04") are version or serial numbers, not how addresses are written
    return all(int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in parts)


def _ipv6_ok(m: re.Match[str]) -> bool:
    text = m.group(0)
    # "::1", "a::b" (C++ scopes) and the like are too weak a signal: two groups and a digit at least
    if sum(1 for g in text.split(":") if g) < 2 or not any(c.isdigit() for c in text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _phone_ok(m: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", m.group(0))
    return 8 <= len(digits) <= 15 and len(set(digits)) > 2


_PLACEHOLDER = re.compile(r"(?i)your|example|sample|placeholder|dummy|changeme|redacted|x{4,}|\*{3,}|<|>")


def _secret_ok(m: re.Match[str]) -> bool:
    value = m.group("value")
    if _PLACEHOLDER.search(value):
        return False
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
    return classes >= 2 and shannon_entropy(value) >= 3.5


def _token_ok(m: re.Match[str]) -> bool:
    value = m.group(0)
    return bool(re.search(r"\d", value)) and bool(re.search(r"[A-Za-z]", value)) and shannon_entropy(value) >= 3.0


def _always(_: re.Match[str]) -> bool:
    return True


@dataclass(frozen=True)
class PiiPattern:
    """One kind of personal data or secret: a pattern, a validator, and a cheap substring pre-check."""

    kind: str
    regex: re.Pattern[str]
    valid: Callable[[re.Match[str]], bool]
    needs: tuple[str, ...] = ()
    group: str | int = 0


def _p(kind: str, pattern: str, valid: Callable[[re.Match[str]], bool] = _always, needs: tuple[str, ...] = (),
       group: str | int = 0) -> PiiPattern:
    return PiiPattern(kind, re.compile(pattern), valid, needs, group)


_DIGITS = tuple("0123456789")

#: Most specific first: a span found by an earlier pattern is not reported again by a later one.
PATTERNS: tuple[PiiPattern, ...] = (
    _p("private_key", r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----",
       needs=("-----BEGIN",)),
    _p("aws_access_key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", needs=("AKIA", "ASIA", "ABIA", "ACCA")),
    _p("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,255})\b",
       needs=("gh", "github_pat_")),
    _p("slack_token", r"\bxox[abposr]-[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+\b", _token_ok, needs=("xox",)),
    _p("openai_key", r"\bsk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}", _token_ok, needs=("sk-",)),
    _p("generic_secret",
       r"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|client[_-]?secret|token|"
       r"password|passwd)\b[\"']?\s*[:=]\s*[\"']?(?P<value>[A-Za-z0-9_\-./+=]{16,})",
       _secret_ok, needs=("=", ":"), group="value"),
    _p("email", r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}"
       r"(?![\w-])", needs=("@",)),
    _p("credit_card", r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d-]|\.\d)", _card_ok, needs=_DIGITS),
    _p("ipv6", r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:]|\.\d)", _ipv6_ok, needs=(":",)),
    _p("ipv4", r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)", _ipv4_ok, needs=(".",)),
    _p("phone", r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"
       r"|\(\d{3}\) ?\d{3}[-.]\d{4}|\d{3}[-.]\d{3}[-.]\d{4})(?![\w]|[.-]\d)", _phone_ok, needs=_DIGITS),
)
KINDS: tuple[str, ...] = tuple(p.kind for p in PATTERNS)


@dataclass(frozen=True)
class PiiMatch:
    """One finding: its kind, where it is in the text, and a masked form safe to print."""

    kind: str
    start: int
    end: int
    masked: str


def mask(kind: str, value: str) -> str:
    """A form of ``value`` that shows its shape but not its content."""
    if kind == "email":
        local, _, domain = value.partition("@")
        host, _, tld = domain.rpartition(".")
        return f"{local[:1]}***@{host[:1]}***.{tld}"
    if kind in ("credit_card", "phone"):
        digits = re.sub(r"\D", "", value)
        return "*" * (len(digits) - (4 if kind == "credit_card" else 2)) + digits[-(4 if kind == "credit_card"
                                                                                  else 2):]
    if kind == "ipv4":
        return ".".join([*value.split(".")[:2], "*", "*"])
    if kind == "ipv6":
        return value.split(":")[0] + ":****"
    if kind == "private_key":
        return value
    return value[:4] + "*" * 8


def find_pii(text: str, kinds: Iterable[str] | None = None) -> list[PiiMatch]:
    """All findings in ``text``, ordered by position, without overlaps (the more specific kind wins)."""
    wanted = set(kinds) if kinds is not None else None
    taken: list[tuple[int, int]] = []
    found: list[PiiMatch] = []
    for pattern in PATTERNS:
        if wanted is not None and pattern.kind not in wanted:
            continue
        if pattern.needs and not any(n in text for n in pattern.needs):
            continue
        for m in pattern.regex.finditer(text):
            start, end = m.span(pattern.group)
            if any(start < e and s < end for s, e in taken) or not pattern.valid(m):
                continue
            taken.append((start, end))
            found.append(PiiMatch(pattern.kind, start, end, mask(pattern.kind, text[start:end])))
    return sorted(found, key=lambda f: f.start)


def redact_text(text: str, kinds: Iterable[str] | None = None, template: str = "[{kind}]") -> str:
    """``text`` with every finding replaced by ``template`` (``{kind}`` becomes e.g. ``EMAIL``)."""
    out, last = [], 0
    for f in find_pii(text, kinds):
        out.append(text[last : f.start])
        out.append(template.format(kind=f.kind.upper()))
        last = f.end
    out.append(text[last:])
    return "".join(out)


@dataclass
class PiiReport:
    """Counts per kind over the scanned rows, and a few masked examples with file and line."""

    rows: int = 0
    rows_with_pii: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "rows_with_pii": self.rows_with_pii, "total": self.total,
                "counts": dict(self.counts), "examples": self.examples}


def scan_pii(paths: Sequence[PathLike], *, kinds: Iterable[str] | None = None, max_examples: int = 3,
             bad_bytes: BadBytes = "error") -> PiiReport:
    """Count the findings of every kind in every row of ``paths``."""
    report = PiiReport(counts=dict.fromkeys(KINDS, 0))
    names = [str(p) for p in paths]
    wanted = list(kinds) if kinds is not None else None
    for path_no, line, text in iter_texts(paths, bad_bytes=bad_bytes):
        report.rows += 1
        found = find_pii(text, wanted)
        if not found:
            continue
        report.rows_with_pii += 1
        for f in found:
            report.counts[f.kind] += 1
            shown = report.examples.setdefault(f.kind, [])
            if len(shown) < max_examples:
                shown.append({"path": names[path_no], "line": line, "masked": f.masked})
    return report
