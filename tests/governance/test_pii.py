"""PII and secret patterns: positives are found and masked; near-misses must not match."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slimtune.governance import find_pii, redact_file, redact_text, scan_pii
from slimtune.governance.pii import luhn_ok
from tests.governance.conftest import write_jsonl


def _luhn_complete(prefix: str) -> str:
    """``prefix`` plus the check digit that makes it pass Luhn."""
    for d in "0123456789":
        if luhn_ok(prefix + d):
            return prefix + d
    raise AssertionError("unreachable: one check digit always fits")


_RNG = np.random.default_rng(7)
_CARD = _luhn_complete("4" + "".join(map(str, _RNG.integers(0, 10, 14))))
_BAD_CARD = _CARD[:-1] + str((int(_CARD[-1]) + 1) % 10)
_TOKEN = "".join(_RNG.choice(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"), 36))

POSITIVES = [
    ("email", "write to jane.doe+news@mail.example.co.uk today"),
    ("phone", "call (555) 123-4567 after five"),
    ("phone", "office +44 20 7946 0958"),
    ("phone", "cell 415-555-0132"),
    ("credit_card", f"card {_CARD[:4]} {_CARD[4:8]} {_CARD[8:12]} {_CARD[12:]} expires soon"),
    ("credit_card", f"pan={_CARD}"),
    ("credit_card", "amex 3782-822463-10005"),
    ("ipv4", "server at 192.168.10.254, port 22"),
    ("ipv6", "host 2001:db8:85a3::8a2e:370:7334 is up"),
    ("ipv6", "loopback ::1 and fe80::1ff:fe23:4567:890a"),
    ("aws_access_key", "aws_access_key_id = AKIA" + "".join(_RNG.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"),
                                                                          16))),
    ("github_token", f"token ghp_{_TOKEN}"),
    ("github_token", "github_pat_11ABCDEFG0" + _TOKEN + "_" + _TOKEN[:25]),
    ("slack_token", "xoxb-2417563829-5829104736251-" + _TOKEN[:24]),
    ("openai_key", "OPENAI_API_KEY is sk-proj-" + _TOKEN[:30]),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n-----END OPENSSH PRIVATE KEY-----"),
    ("generic_secret", 'config: api_key = "' + _TOKEN[:24] + '"'),
    ("generic_secret", "password: " + _TOKEN[:20]),
]

NEAR_MISSES = [
    "user at example dot com",
    "an @mention and a trailing email@ sign",
    f"order number {_BAD_CARD}",  # 16 digits failing Luhn
    "0000 0000 0000 0000",
    "version 1.2.3.4.5 released",
    "upgrade to v1.2.3.4 now",
    "octets 999.1.1.1 are out of range",
    "serial 01.02.03.04",
    "meeting at 12:30:45 in room 4",
    "std::vector<int> and a::b",
    "dates 2024-01-15 and 1999-12-31",
    "short number 555-1234",
    "AKIA is a prefix, AKIA1234 is too short",
    "ghp_short",
    "api_key = YOUR_API_KEY_HERE_PLEASE",
    "password = xxxxxxxxxxxxxxxxxxxx",
    "token: aaaaaaaaaaaaaaaaaaaaaaaa",
    "the task-list was sk-etched",
    "ratio 3.14159265358979",
    "isbn 978-3-16-148410-0",
]


@pytest.mark.parametrize(("kind", "text"), POSITIVES)
def test_positives_are_found_and_masked(kind: str, text: str) -> None:
    found = find_pii(text)
    assert [f.kind for f in found] == [kind], found
    value = text[found[0].start : found[0].end]
    if kind != "private_key":
        assert found[0].masked != value  # masking hides the value
    assert f"[{kind.upper()}]" in redact_text(text)


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_do_not_match(text: str) -> None:
    assert find_pii(text) == []


def test_luhn_on_random_numbers() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        body = "".join(map(str, rng.integers(0, 10, 15)))
        good = _luhn_complete(body)
        assert luhn_ok(good)
        assert not luhn_ok(good[:-1] + str((int(good[-1]) + 1 + int(rng.integers(0, 9))) % 10))


def test_scan_counts_and_redact_file(tmp_path: Path) -> None:
    rows = [{"prompt": "mail bob@corp.example.org", "completion": "ok"},
            {"prompt": "clean row", "completion": "nothing here"},
            {"messages": [{"role": "user", "content": "my ip is 10.1.2.3"},
                          {"role": "assistant", "content": "and mine is carol@x.example.net"}]}]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    report = scan_pii([src])
    assert report.rows == 3 and report.rows_with_pii == 2 and report.counts["email"] == 2
    assert report.counts["ipv4"] == 1 and report.examples["email"][0]["line"] == 1
    assert "bob" not in json.dumps(report.to_dict())
    record = redact_file(src, tmp_path / "out.jsonl")
    assert record["findings_redacted"] == 3
    cleaned = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert cleaned[0]["prompt"] == "mail [EMAIL]" and cleaned[1] == rows[1]
    assert cleaned[2]["messages"][0]["content"] == "my ip is [IPV4]"
    assert scan_pii([tmp_path / "out.jsonl"]).total == 0
