"""Online models, on River's own interface (``learn_one``, ``predict_proba_one``).

- :class:`PropensityModels`: one logistic regression per reward, the probability
  that a user redeems it if offered now, learned from outcome events;
  :func:`log_loss` scores one of its predictions against the answer.
- :mod:`app.models.exploration`: epsilon-greedy choice whose probability is exact
  and reproducible, so every decision can log it for offline evaluation.
"""

from app.models.exploration import explore_draw
from app.models.propensity import PropensityModels, log_loss

__all__ = ["PropensityModels", "explore_draw", "log_loss"]
