"""Per-user state and the features derived from it.

- :mod:`app.features.state`: ``UserState`` (kept per user in a changelog-backed
  table) and the pure updates ``observe``, ``record_grant``, ``close_offer``,
  ``prune``; all in event time.
- :mod:`app.features.derive`: ``rule_env`` (the names program rules use) and
  ``model_features`` (the behavioural context the propensity models learn from).
"""

from app.features.derive import MODEL_FEATURES, model_features, rule_env
from app.features.state import UserState, observe

__all__ = ["MODEL_FEATURES", "UserState", "model_features", "observe", "rule_env"]
