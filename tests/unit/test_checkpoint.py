"""Model checkpoints: JSON in, the same models out; anything else is refused, not loaded."""

from __future__ import annotations

import orjson
import pytest

from app.fraud import RiskModels
from app.models.checkpoint import FORMAT, encode, learned_through, restore_into
from app.models.propensity import PropensityModels

# "a" is banded: a checkpoint must bring back the weights of its bands too.
BANDED = ("a",)


def trained() -> PropensityModels:
    models = PropensityModels(prior=0.2, learning_rate=0.1, banded=BANDED)
    for n in range(50):
        models.learn_one("points", {"a": n % 3, "b": 1.0}, n % 2 == 0)
    return models


def test_round_trip_gives_the_same_predictions() -> None:
    source = trained()
    target = PropensityModels(prior=0.2, learning_rate=0.1, banded=BANDED)
    assert restore_into(target, encode("p", "sha", source), program_id="p")
    assert target.updates == source.updates == 50
    for x in ({"a": 0.0, "b": 1.0}, {"a": 2.0, "b": 1.0}):
        assert target.predict_one("points", x) == source.predict_one("points", x)
    assert target.predict_one("cashback", {"a": 1.0}) == 0.2  # an unseen kind keeps the prior


def test_a_restored_model_goes_on_learning_exactly_as_the_original() -> None:
    """The scaler's running statistics come back too, not only the weights."""
    source = trained()
    target = PropensityModels(prior=0.2, learning_rate=0.1, banded=BANDED)
    restore_into(target, encode("p", "sha", source), program_id="p")
    for models in (source, target):
        for n in range(20):
            models.learn_one("points", {"a": 5.0 + n, "b": 1.0}, n % 3 == 0)
    x = {"a": 7.0, "b": 1.0}
    assert target.predict_one("points", x) == pytest.approx(source.predict_one("points", x))


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b"[1, 2]",
        orjson.dumps({"format": 99, "program": "p", "state": {}}),
        # a checkpoint from before the models standardized their features
        orjson.dumps({"format": 1, "program": "p", "state": {"updates": 1, "models": {}}}),
        orjson.dumps({"format": FORMAT, "program": "other", "state": {"updates": 1, "models": {}}}),
        orjson.dumps({"format": FORMAT, "program": "p", "state": {"updates": 1}}),
        orjson.dumps(
            {
                "format": FORMAT,
                "program": "p",
                "state": {"updates": 1, "models": {"k": {"weights": {"a": "x"}}}},
            }
        ),
    ],
)
def test_unusable_checkpoints_are_refused_and_leave_the_prior(raw: bytes | None) -> None:
    models = PropensityModels(prior=0.2, learning_rate=0.1, banded=BANDED)
    assert not restore_into(models, raw, program_id="p")
    assert models.updates == 0
    assert models.predict_one("points", {"a": 1.0}) == 0.2


def test_the_fraud_model_trained_by_labels_comes_back_too() -> None:
    source = RiskModels(seed=1)
    for n in range(8):
        source.learn_label({"device.signups": 0.9, "redemption.fast": 0.3}, n % 2 == 0)
    target = RiskModels(seed=1)
    raw = encode("p", "sha", trained(), source)
    assert restore_into(
        PropensityModels(prior=0.2, learning_rate=0.1, banded=BANDED),
        raw,
        program_id="p",
        risk=target,
    )
    vector = {"device.signups": 0.9}
    assert target.label_counts == source.label_counts
    assert target.labelled_signal(vector) == source.labelled_signal(vector)


def test_a_checkpoint_names_the_inputs_whose_learning_it_holds() -> None:
    raw = encode("p", "sha", trained(), learned_through={"events/0": 120, "events/3": 7})
    assert learned_through(raw, program_id="p") == {"events/0": 120, "events/3": 7}
    assert learned_through(raw, program_id="other") == {}  # another program's models
    assert learned_through(encode("p", "sha", trained()), program_id="p") == {}
    before = orjson.loads(raw)
    del before["learned_through"]  # written before checkpoints carried positions
    assert learned_through(orjson.dumps(before), program_id="p") == {}
    for unusable in (None, b"", b"{", b"[1]", b'{"program": "p", "learned_through": [1]}'):
        assert learned_through(unusable, program_id="p") == {}
