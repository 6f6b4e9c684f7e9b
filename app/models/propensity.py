"""P(redeemed | offered, context), learned online from outcomes that arrive late.

Answers come late and unevenly: a redemption within hours, silence only
counts as "no" once the program's response window has passed. A model that
waits for every answer learns from the quick yeses long before the slow noes
and overestimates every reward at first. So each offer is learned as a "no"
the moment it is granted, and learned again as a "yes" if it is redeemed (the
fake-negative scheme of Ktena et al., 2019, "Addressing delayed feedback for
continuous training"). The model then estimates q = p / (1 + p), and
:meth:`PropensityModels.predict_one` returns p = q / (1 - q).

Cold start: each model's intercept starts where p equals the program's
``prior``, so every reward has a propensity from the very first event.
Models see only behavioural features (:data:`app.features.derive.MODEL_FEATURES`).
"""

from __future__ import annotations

import math

from river import linear_model, optim

# p = q / (1 - q) grows without bound as q nears 1/2; a probability stops below 1.
MAX_PROPENSITY = 0.999


def _logit(q: float) -> float:
    return math.log(q / (1.0 - q))


class PropensityModels:
    """One River ``LogisticRegression`` per key (reward kind), created on first use."""

    def __init__(self, *, prior: float, learning_rate: float) -> None:
        self.prior = prior
        self.learning_rate = learning_rate
        self.models: dict[str, linear_model.LogisticRegression] = {}
        self.updates = 0

    def _model(self, key: str) -> linear_model.LogisticRegression:
        model = self.models.get(key)
        if model is None:
            model = linear_model.LogisticRegression(
                optimizer=optim.SGD(self.learning_rate),
                intercept_init=_logit(self.prior / (1.0 + self.prior)),
                intercept_lr=self.learning_rate,
                l2=1e-4,
            )
            self.models[key] = model
        return model

    def predict_one(self, key: str, features: dict[str, float]) -> float:
        """Probability that the user redeems the reward described by ``features``, if offered."""
        model = self.models.get(key)
        if model is None:
            return self.prior
        q = float(model.predict_proba_one(features)[True])
        return min(MAX_PROPENSITY, q / max(1.0 - q, 1e-9))

    def learn_offer(self, key: str, features: dict[str, float]) -> None:
        """An offer was granted: learned as a "no" until it is redeemed."""
        self._model(key).learn_one(features, False)
        self.updates += 1

    def learn_redemption(self, key: str, features: dict[str, float]) -> None:
        """A granted offer was redeemed: the "yes" that corrects its provisional "no"."""
        self._model(key).learn_one(features, True)
        self.updates += 1

    def contributions(
        self, key: str, features: dict[str, float], *, top: int = 2
    ) -> list[tuple[str, float]]:
        """The features that moved this score most, as (name, weight x value) in logit units."""
        model = self.models.get(key)
        if model is None:
            return []
        weights = model.weights
        terms = [(name, weights.get(name, 0.0) * value) for name, value in features.items()]
        terms = [t for t in terms if abs(t[1]) >= 0.01]
        terms.sort(key=lambda t: (-abs(t[1]), t[0]))
        return terms[:top]
