"""The slot copier gives what dataclasses.replace gives, and keeps records frozen."""

from __future__ import annotations

import dataclasses

import pytest

from app.features.state import UserState
from app.fraud.assess import RiskState
from app.fraud.links import Seen
from app.frozen import replace


@pytest.mark.parametrize(
    ("record", "changes"),
    [
        (UserState(events=3, profile={"age": 30}), {"events": 4, "repeats": 1}),
        (UserState(), {}),
        (RiskState(level=0.5), {"level": 0.25, "label": "cleared"}),
        (Seen("u-1", 1, 2), {"last_ts": 3, "ip": "10.0.0.1"}),
    ],
)
def test_a_copy_is_what_dataclasses_replace_makes(
    record: object, changes: dict[str, object]
) -> None:
    copied = replace(record, **changes)
    expected = dataclasses.replace(record, **changes)  # type: ignore[type-var]
    assert copied == expected
    assert type(copied) is type(record)
    assert copied is not record
    for field in dataclasses.fields(expected):  # type: ignore[arg-type]
        assert getattr(copied, field.name) is getattr(expected, field.name)


def test_a_copy_stays_frozen() -> None:
    copied = replace(UserState(), events=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        copied.events = 2  # type: ignore[misc]


def test_an_unknown_field_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="nope"):
        replace(UserState(), nope=1)


def test_records_it_cannot_rebuild_exactly_are_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class NotSlotted:
        a: int = 0

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int = 0

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError, match="slotted"):
        replace(NotSlotted(), a=1)
    with pytest.raises(TypeError, match="__init__"):
        replace(Checked(), a=1)
