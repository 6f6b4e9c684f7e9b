"""P(redeemed | offered, context) per reward, learned online from outcomes.

Cold start: each model's intercept starts at the program's ``prior`` (logit),
so from the very first event every reward has a propensity, the prior, and
exploration sorts out the rest. Models see only behavioural features
(:data:`app.features.derive.MODEL_FEATURES`).
"""

from __future__ import annotations

import math
from typing import Any

from river import linear_model, optim


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class PropensityModels:
    """One River ``LogisticRegression`` per reward id, created on first use."""

    def __init__(self, *, prior: float, learning_rate: float) -> None:
        self.prior = prior
        self.learning_rate = learning_rate
        self.models: dict[str, linear_model.LogisticRegression] = {}
        self.updates = 0

    def _model(self, reward_id: str) -> linear_model.LogisticRegression:
        model = self.models.get(reward_id)
        if model is None:
            model = linear_model.LogisticRegression(
                optimizer=optim.SGD(self.learning_rate),
                intercept_init=_logit(self.prior),
                intercept_lr=self.learning_rate,
                l2=1e-4,
            )
            self.models[reward_id] = model
        return model

    def predict_one(self, reward_id: str, features: dict[str, float]) -> float:
        """Probability that the user redeems ``reward_id`` if it is offered now."""
        model = self.models.get(reward_id)
        if model is None:
            return self.prior
        return float(model.predict_proba_one(features)[True])

    def learn_one(self, reward_id: str, features: dict[str, float], redeemed: bool) -> None:
        self._model(reward_id).learn_one(features, redeemed)
        self.updates += 1

    def contributions(
        self, reward_id: str, features: dict[str, float], *, top: int = 2
    ) -> list[tuple[str, float]]:
        """The features that moved this score most, as (name, weight x value) in logit units."""
        model = self.models.get(reward_id)
        if model is None:
            return []
        weights = model.weights
        terms = [(name, weights.get(name, 0.0) * value) for name, value in features.items()]
        terms = [t for t in terms if abs(t[1]) >= 0.01]
        terms.sort(key=lambda t: (-abs(t[1]), t[0]))
        return terms[:top]

    # ------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict[str, Any]:
        """Everything learned, as plain JSON-ready data (never a pickle: a checkpoint
        read back from Kafka must not be able to run code)."""
        return {
            "updates": self.updates,
            "models": {
                key: {
                    "weights": dict(model._weights),
                    "intercept": model.intercept,
                    "steps": model.optimizer.n_iterations,
                }
                for key, model in sorted(self.models.items())
            },
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from ``snapshot`` (as made by :meth:`snapshot`) instead of the prior."""
        self.models.clear()
        for key, state in snapshot["models"].items():
            model = self._model(key)
            for name, weight in state["weights"].items():
                model._weights[name] = float(weight)
            model.intercept = float(state["intercept"])
            model.optimizer.n_iterations = int(state["steps"])
        self.updates = int(snapshot["updates"])
