"""P(redeemed | offered, context) per reward kind, learned online from outcomes.

Each kind has a River pipeline, ``StandardScaler | LogisticRegression``. The
scaler matters: the behavioural features live on very different scales (a
0/1 channel flag beside a log of lifetime spend near 8), and plain SGD on raw
values spends its first hundreds of answers fighting that, which is exactly
the warm-up a new program cannot afford (docs/benchmarks.md has the figures).

Bands: a regression on standardised values can only say "the more, the likelier" or
"the less"; the users who answer a reward best often sit in the middle of a feature's
range (baskets neither small nor large, a few visits a week). So between the scaler and
the regression, :class:`StandardBands` adds for each continuous feature an indicator of
the band its standardised value falls in (edges at :data:`BAND_EDGES` standard
deviations): each feature gets a learned step curve on top of its line, on the scale
the scaler learns from the data, so no world's units are assumed
(docs/decisions.md §42).

Cold start: each model's intercept starts at the program's ``prior`` (logit),
so from the very first event every reward has a propensity, the prior, and
exploration sorts out the rest. Models see only behavioural features
(:data:`app.features.derive.MODEL_FEATURES`).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections import Counter, defaultdict
from collections.abc import Hashable
from typing import Any

from river import base, compose, linear_model, optim, preprocessing

from app.models.deferral import Deferral

# Predictions are clipped this far from 0 and 1 before scoring: one confident miss costs
# about 16 nats instead of infinity, and the mean stays a number.
LOG_LOSS_EPSILON = 1e-7


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def log_loss(predicted: float, redeemed: bool) -> float:
    """The log loss (in nats) of predicting ``predicted`` for an offer whose answer was
    ``redeemed``: 0 for a certain, right prediction, ln 2 for a coin flip."""
    p = min(max(predicted, LOG_LOSS_EPSILON), 1.0 - LOG_LOSS_EPSILON)
    return -math.log(p if redeemed else 1.0 - p)


# Where the bands of a standardised value end, in standard deviations: eight bands, the
# middle six half a deviation wide.
BAND_EDGES = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)


def band_of(value: float) -> int:
    """The band (0 to len(BAND_EDGES)) a standardised value falls in: how many edges it
    is above (a NaN is above none)."""
    return bisect.bisect_left(BAND_EDGES, value)


# The band of the average user (a standardised value of 0): explanations weigh a
# user's band against it.
AVERAGE_BAND = band_of(0.0)


class StandardBands(base.Transformer):
    """The standardised features as they are, and for each of ``features`` the indicator
    ``<name>#<band>`` of the band it falls in. Only the one indicator that is 1 is sent:
    a feature left out weighs nothing in the regression's score and gets no step, as a
    0 would. Holds no state: what it depends on is the scaler's."""

    def __init__(self, features: tuple[str, ...] = ()) -> None:
        self.features = features

    def transform_one(self, x: dict[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(x)
        for name, names in _band_names(self.features):
            value = x.get(name)
            if value is not None:
                out[names[band_of(value)]] = 1.0
        return out


@functools.lru_cache(maxsize=16)  # a model's features: looked up at every score
def _band_names(features: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each feature with the names of its band indicators, by band."""
    bands = range(len(BAND_EDGES) + 1)
    return tuple((name, tuple(f"{name}#{band}" for band in bands)) for name in features)


class DecayingStep(optim.base.Scheduler):
    """A step of ``max(floor, start / sqrt(t + 1))`` at a model's t-th update: bold while it
    has seen little, settled once it has seen much (docs/decisions.md §47)."""

    def __init__(self, start: float, floor: float) -> None:
        self.start = start
        self.floor = floor

    def get(self, t: int) -> float:
        return max(self.floor, self.start / math.sqrt(t + 1))


class PropensityModels:
    """One River pipeline (scaler, bands, then logistic regression) per key, created on
    first use. ``weight_step``: (start, floor) of the weights' :class:`DecayingStep`, or
    None for ``learning_rate`` throughout; the intercept always steps by
    ``learning_rate``."""

    def __init__(
        self,
        *,
        prior: float,
        learning_rate: float,
        banded: tuple[str, ...] = (),
        weight_step: tuple[float, float] | None = None,
    ) -> None:
        self.prior = prior
        self.learning_rate = learning_rate
        self.weight_step = weight_step
        # The continuous features that get band indicators (StandardBands).
        self.banded = banded
        self.models: dict[str, compose.Pipeline] = {}
        self.updates = 0
        # The worker holds learning steps until their batch commits (app.models.deferral).
        self.deferral = Deferral()

    def _model(self, key: str) -> compose.Pipeline:
        model = self.models.get(key)
        if model is None:
            model = (
                preprocessing.StandardScaler()
                | StandardBands(self.banded)
                | linear_model.LogisticRegression(
                    optimizer=optim.SGD(
                        self.learning_rate
                        if self.weight_step is None
                        else DecayingStep(*self.weight_step)
                    ),
                    intercept_init=_logit(self.prior),
                    intercept_lr=self.learning_rate,
                    l2=1e-4,
                )
            )
            self.models[key] = model
        return model

    def predict_one(self, key: str, features: dict[str, float]) -> float:
        """Probability that the user redeems a reward of ``key`` if it is offered now."""
        model = self.models.get(key)
        if model is None:
            return self.prior
        return float(model.predict_proba_one(features)[True])

    def learn_one(self, key: str, features: dict[str, float], redeemed: bool) -> None:
        """Learn one answer (now, or once its batch commits: see :attr:`deferral`)."""
        self.deferral.run(functools.partial(self._learn_now, key, dict(features), redeemed))

    def _learn_now(self, key: str, features: dict[str, float], redeemed: bool) -> None:
        self._model(key).learn_one(features, redeemed)
        self.updates += 1

    def contributions(
        self, key: str, features: dict[str, float], *, top: int = 2
    ) -> list[tuple[str, float]]:
        """The features that moved this score most, as (name, weight x scaled value, and
        for a banded feature its band's weight against the average user's band) in logit
        units: how far this user's value, against the average user's, moved the score."""
        model = self.models.get(key)
        if model is None:
            return []
        scaled = _scaler(model).transform_one(features)
        weights = _classifier(model).weights
        banded = set(self.banded)
        terms = []
        for name, value in scaled.items():
            term = weights.get(name, 0.0) * value
            if name in banded:
                term += weights.get(f"{name}#{band_of(value)}", 0.0)
                term -= weights.get(f"{name}#{AVERAGE_BAND}", 0.0)
            terms.append((name, term))
        terms = [t for t in terms if abs(t[1]) >= 0.01]
        terms.sort(key=lambda t: (-abs(t[1]), t[0]))
        return terms[:top]

    # ------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict[str, Any]:
        """Everything learned, as plain JSON-ready data (never a pickle: a checkpoint
        read back from Kafka must not be able to run code)."""
        return {
            "updates": self.updates,
            "models": {key: _snapshot_one(model) for key, model in sorted(self.models.items())},
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from ``snapshot`` (as made by :meth:`snapshot`) instead of the prior."""
        self.models.clear()
        for key, state in snapshot["models"].items():
            _restore_one(self._model(key), state)
        self.updates = int(snapshot["updates"])


def _scaler(model: compose.Pipeline) -> preprocessing.StandardScaler:
    return model["StandardScaler"]


def _classifier(model: compose.Pipeline) -> linear_model.LogisticRegression:
    return model["LogisticRegression"]


def load_weights(classifier: linear_model.LogisticRegression, weights: dict[str, Any]) -> None:
    """Give ``classifier`` the ``weights`` a checkpoint holds (read from its public
    ``weights``). River reads its ``weights`` but offers no way to set them other than
    pickling the whole model, and a checkpoint read back from Kafka must not be a
    pickle: this is the one place that writes River's private weight vector."""
    for name, weight in weights.items():
        classifier._weights[name] = float(weight)


def _snapshot_one(model: compose.Pipeline) -> dict[str, Any]:
    scaler, classifier = _scaler(model), _classifier(model)
    return {
        "weights": classifier.weights,
        "intercept": classifier.intercept,
        "steps": classifier.optimizer.n_iterations,
        "scaler": {
            name: [scaler.counts[name], scaler.means[name], scaler.vars[name]]
            for name in sorted(scaler.counts)
        },
    }


def _restore_one(model: compose.Pipeline, state: dict[str, Any]) -> None:
    scaler, classifier = _scaler(model), _classifier(model)
    load_weights(classifier, state["weights"])
    classifier.intercept = float(state["intercept"])
    classifier.optimizer.n_iterations = int(state["steps"])
    scaler.counts = Counter()
    scaler.means = defaultdict(float)
    scaler.vars = defaultdict(float)
    for name, (count, mean, var) in state["scaler"].items():
        scaler.counts[name] = int(count)
        scaler.means[name] = float(mean)
        scaler.vars[name] = float(var)
