"""Validation helpers shared by the method configs: messages quote the bad value and name the field."""

from __future__ import annotations

import re

from slimtune.errors import ConfigError


def check_positive_int(owner: str, name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{owner}.{name} must be a positive integer, got {value!r}")


def check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{owner}.{name} must be one of {', '.join(choices)}; got {value!r}")


def check_targets(owner: str, name: str, value: object) -> None:
    if isinstance(value, str):
        if value == "all-linear":
            return
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(f"{owner}.{name} {value!r} is not a valid regular expression: {exc}") from exc
    elif not value or not all(isinstance(v, str) and v for v in value):  # type: ignore[attr-defined]
        raise ConfigError(f"{owner}.{name} must be a non-empty list of module names or a regex, got {value!r}")
