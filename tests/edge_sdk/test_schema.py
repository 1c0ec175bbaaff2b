"""edge_sdk.schema: the one validator behind the manifest and the recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import pytest

from edge_sdk.errors import EdgeSdkError
from edge_sdk.schema import Schema, checked, to_plain


@dataclass(frozen=True)
class Inner:
    ratio: float = checked(0.5, minimum=0.0, maximum=1.0)
    size: Tuple[int, int] = checked((32, 32), minimum=1)


@dataclass(frozen=True)
class Outer:
    name: str
    mode: str = checked("fast", choices=("fast", "slow"))
    steps: int = checked(32, minimum=32, multiple_of=32)
    note: str = checked("", allow_empty=True)
    must: int = checked(1, required=True)
    limit: Optional[float] = None
    tags: List[str] = checked(["a"])
    inner: Inner = field(default_factory=Inner)
    named: Dict[str, Inner] = field(default_factory=dict)


SCHEMA = Schema(EdgeSdkError, aliases={"stride": "steps"}, prefix="doc ")


def load(**data):
    return SCHEMA.load(Outer, dict({"name": "n", "must": 1}, **data))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"ratio": 1.5}}, "doc inner.ratio: expected a number between 0.0 and 1.0, got 1.5"),
        ({"inner": {"ratio": -0.1}}, "doc inner.ratio: expected a number between 0.0 and 1.0, got -0.1"),
        ({"inner": {"ratio": True}}, "doc inner.ratio: expected a number between 0.0 and 1.0, got True"),
        ({"steps": 48}, "doc steps: expected an integer >= 32 and a multiple of 32, got 48"),
        ({"mode": "slwo"}, "doc mode: expected one of fast, slow, got 'slwo' (did you mean 'slow'?)"),
        ({"name": ""}, "doc name: expected a non-empty string, got ''"),
        ({"note": 3}, "doc note: expected a string, got 3"),
        ({"limit": "x"}, "doc limit: expected a number or null, got 'x'"),
        ({"tags": "a"}, "doc tags: expected a list, got 'a'"),
        ({"inner": {"size": [1, 2, 3]}}, "doc inner.size: expected a list of 2 items, got [1, 2, 3]"),
        ({"inner": {"size": [1, 0]}}, "doc inner.size[1]: expected an integer >= 1, got 0"),
        ({"named": {"a": {"ratio": 2}}}, "doc named.a.ratio: expected a number between 0.0 and 1.0, got 2"),
        ({"named": []}, "doc named: expected a mapping, got []"),
        ({"inner": 3}, "doc inner: expected a mapping of fields, got 3"),
        ({"strid": 64}, "doc strid: unknown field (did you mean 'steps'?)"),
        ({"must": None}, "doc must: expected an integer, got None"),
    ],
)
def test_errors_name_the_field(data, message):
    with pytest.raises(EdgeSdkError) as info:
        load(**data)
    assert str(info.value) == message


def test_missing_fields():
    with pytest.raises(EdgeSdkError, match="^doc must is missing$"):
        SCHEMA.load(Outer, {"name": "n"})
    with pytest.raises(EdgeSdkError, match="^doc name is missing$"):
        SCHEMA.load(Outer, {"must": 1})


def test_values_are_converted_and_defaults_kept():
    loaded = load(inner={"ratio": 1, "size": [64, 48]}, named={"x": {}}, limit=2)
    assert loaded.inner == Inner(ratio=1.0, size=(64, 48))
    assert isinstance(loaded.inner.ratio, float) and isinstance(loaded.limit, float)
    assert loaded.named == {"x": Inner()}
    assert loaded.tags == ["a"] and load().tags is not loaded.tags
    assert to_plain(loaded)["inner"] == {"ratio": 1.0, "size": [64, 48]}


def test_unknown_fields_can_be_ignored():
    lenient = Schema(EdgeSdkError, ignore_unknown=True)
    assert lenient.load(Inner, {"ratio": 0.25, "later": 1}) == Inner(ratio=0.25)
