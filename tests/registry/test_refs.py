"""Reference and URI parsing: valid forms round-trip, every malformed one is a RegistryError naming the input."""

from __future__ import annotations

import pytest

from slimtune.errors import RegistryError
from slimtune.registry import RefSpec, VersionRef, is_registry_uri, parse_ref, parse_uri


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("chat", RefSpec("chat")),
        ("chat:3", RefSpec("chat", version=3)),
        ("chat@production", RefSpec("chat", alias="production")),
        ("my-org.chat_v2:12", RefSpec("my-org.chat_v2", version=12)),
        ("  chat@staging  ", RefSpec("chat", alias="staging")),
    ],
)
def test_valid_refs(text: str, expected: RefSpec) -> None:
    assert parse_ref(text) == expected
    assert str(parse_ref(text)) == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "chat:",
        "chat:0",
        "chat:-1",
        "chat:x",
        ":3",
        "@prod",
        "chat@",
        "chat@1prod",
        "chat:3@prod",
        "ch/at",
        "-chat",
        "chat@pro duction",
        "chat:3.0",
    ],
)
def test_bad_refs_are_refused_with_the_input_quoted(text: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_ref(text)
    assert repr(text) in str(info.value) or "empty reference" in str(info.value)


def test_version_ref_passes_through() -> None:
    assert parse_ref(VersionRef("chat", 2)) == RefSpec("chat", version=2)
    assert str(VersionRef("chat", 2)) == "chat:2"


def test_uris() -> None:
    assert parse_uri("registry://chat@production") == RefSpec("chat", alias="production")
    assert parse_uri("registry://chat:4") == RefSpec("chat", version=4)
    assert is_registry_uri("registry://chat") and not is_registry_uri("/tmp/chat")
    with pytest.raises(RegistryError, match="not a registry URI"):
        parse_uri("file:///tmp/x")
    with pytest.raises(RegistryError, match="SLIMTUNE_REGISTRY"):
        parse_uri("registry:///srv/reg/chat@production")
