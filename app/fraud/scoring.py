"""One risk score in [0, 1] per event, from the signals, an anomaly detector and analysts' labels.

The score is a noisy-OR: each signal is an independent chance ``weight`` that
the event is fraud, so ``1 - prod(1 - weight)``. Two weak signals add up to
more than either; no pile of weak ones reaches certainty. Two learned parts
join as signals of their own:

- unsupervised half-space trees (:mod:`app.fraud.halfspace`, River's algorithm and
  trees) over the user's scaled activity
  rates and link counts (weight 0.25 when it finds the event more isolated
  than 95% of the recent window). It speaks in alerts only, never in a
  decision's risk (see :class:`app.fraud.assess.Assessment`);
- a supervised River ``LogisticRegression`` over the signal weights, trained
  by ``fraud_label`` events (confirmed: fraud; cleared: not). It only speaks
  once it has seen both kinds of label, and then with its own probability.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

from river import linear_model, optim

from app.fraud.halfspace import WindowedHalfSpaceTrees
from app.fraud.links import LinkFacts
from app.fraud.signals import RATE_NAMES, Activity, Signal
from app.models.deferral import Deferral
from app.models.propensity import load_weights

ANOMALY_QUANTILE_SCORE = 0.95
ANOMALY_WEIGHT = 0.25
# Upper ends of the detector's inputs (it expects features in known ranges).
ANOMALY_LIMITS: dict[str, tuple[float, float]] = {
    "events_1m": (0.0, 30.0),
    "events_1h": (0.0, 150.0),
    "earning_1h": (0.0, 15.0),
    "redemptions_10m": (0.0, 10.0),
    "tiny_purchases_30m": (0.0, 15.0),
    "purchases_10m": (0.0, 10.0),
    "foreign_1d": (0.0, 10.0),
    "device_accounts_24h": (0.0, 10.0),
    "net_accounts_24h": (0.0, 10.0),
}
_ANOMALY_NAMES = (*RATE_NAMES, "device_accounts_24h", "net_accounts_24h")
_ANOMALY_HIGHS = tuple(ANOMALY_LIMITS[name][1] for name in _ANOMALY_NAMES)
MIN_LABELS_EACH = 3  # the labelled model speaks after this many of each label


def noisy_or(weights: Iterable[float]) -> float:
    """The chance that at least one of independent causes with these weights holds."""
    clear = 1.0
    for weight in weights:
        # Clipped to [0, 1], a NaN to 0 (as min(1, max(0, w)) would), without two calls.
        if not weight >= 0.0:
            continue
        clear *= 0.0 if weight >= 1.0 else 1.0 - weight
    return 1.0 - clear


def anomaly_can_alert(event_score: float, alert_at: float) -> bool:
    """Whether the detector's signal could change what an event's alert says: it speaks
    only in alerts (:class:`app.fraud.assess.Assessment`), at a fixed weight, so where
    even that weight cannot lift the event's own score to the alert threshold, the
    event has no alert with or without it. The same sum as ``Assessment.alert_score``."""
    return round(noisy_or((round(event_score, 4), ANOMALY_WEIGHT)), 4) >= alert_at


def anomaly_features(activity: Activity, facts: tuple[LinkFacts, ...]) -> dict[str, float]:
    """The detector's inputs: the user's activity rates and the most accounts a device
    or a network of the event saw in a day, each clipped to its upper end."""
    device = net = 0
    for f in facts:
        if f.kind == "device":
            device = max(device, f.accounts_24h)
        elif f.kind == "net":
            net = max(net, f.accounts_24h)
    values = (*activity.rates, float(device), float(net))
    return {
        name: high if high < value else value  # min(value, high), NaN kept as min keeps it
        for name, value, high in zip(_ANOMALY_NAMES, values, _ANOMALY_HIGHS, strict=True)
    }


class RiskModels:
    """The learned parts of the risk score, shared by every user of a worker."""

    def __init__(self, *, seed: int) -> None:
        self.detector = WindowedHalfSpaceTrees(
            n_trees=10, height=8, window_size=250, limits=ANOMALY_LIMITS, seed=seed
        )
        self.labelled = linear_model.LogisticRegression(optimizer=optim.SGD(0.1), l2=1e-3)
        self.label_counts = {"confirmed": 0, "cleared": 0}
        # The worker holds learning steps until their batch commits (app.models.deferral).
        self.deferral = Deferral()

    def anomaly_signal(self, features: dict[str, float], *, wanted: bool = True) -> Signal | None:
        """Score the event against recent traffic (only if ``wanted``), then learn from it.

        Scoring changes nothing in the detector, so an event whose score could not
        matter (:func:`anomaly_can_alert`) skips it; every event is learned from, so the
        detector's window is the same either way."""
        score = self.detector.score_at_least(features, ANOMALY_QUANTILE_SCORE) if wanted else None
        # ``features`` is built for this event alone and never changed after.
        self.deferral.run(functools.partial(self.detector.learn_one, features))
        if score is None:
            return None
        return Signal("anomaly.isolated", ANOMALY_WEIGHT, f"anomaly score {score:.2f}")

    def labelled_signal(self, vector: dict[str, float]) -> Signal | None:
        """What the analysts' labels so far say about signals like these."""
        if min(self.label_counts.values()) < MIN_LABELS_EACH or not vector:
            return None
        p = float(self.labelled.predict_proba_one(vector)[True])
        if p < 0.05:
            return None
        return Signal("model.labelled", p, f"labelled cases like this one: p={p:.2f}")

    def learn_label(self, vector: dict[str, float], confirmed: bool) -> None:
        self.deferral.run(functools.partial(self._learn_label_now, dict(vector), confirmed))

    def _learn_label_now(self, vector: dict[str, float], confirmed: bool) -> None:
        self.labelled.learn_one(vector, confirmed)
        self.label_counts["confirmed" if confirmed else "cleared"] += 1

    def snapshot(self) -> dict[str, Any]:
        """The labelled model as JSON-ready data (the anomaly window re-learns in 250 events)."""
        return {
            "weights": self.labelled.weights,
            "intercept": self.labelled.intercept,
            "label_counts": dict(self.label_counts),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        load_weights(self.labelled, snapshot["weights"])
        self.labelled.intercept = float(snapshot["intercept"])
        self.label_counts = {k: int(snapshot["label_counts"][k]) for k in self.label_counts}


def signal_vector(signals: Iterable[Signal]) -> dict[str, float]:
    """Signals as model features: the strongest weight per code."""
    vector: dict[str, float] = {}
    for signal in signals:
        if signal.code != "model.labelled":
            vector[signal.code] = max(vector.get(signal.code, 0.0), signal.weight)
    return vector


def decayed(level: float, since_ms: int, half_life_ms: int) -> float:
    return level * math.pow(0.5, max(0, since_ms) / half_life_ms)
