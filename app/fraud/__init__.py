"""Fraud: signals of reward abuse, one risk score per event, holds and analyst labels.

- :mod:`app.fraud.links`: the link stage's state per device and per network
  (accounts, sign-ups, referrals between them) and the facts it adds to an event;
- :mod:`app.fraud.signals`: each signal as a pure function, with its threshold;
- :mod:`app.fraud.scoring`: the noisy-OR score, the anomaly detector and the
  model trained by analysts' labels;
- :mod:`app.fraud.assess`: a user's risk state and the assessment of one event.

The engine (:mod:`app.decisioning.engine`) turns an assessment into a granted,
held or blocked reward and into fraud alerts.
"""

from app.fraud.assess import NO_RISK, Assessment, Hold, RiskState, assess, label
from app.fraud.links import Linker, LinkFacts, LinkState, link_keys, observe_link
from app.fraud.scoring import RiskModels
from app.fraud.signals import Signal

__all__ = [
    "NO_RISK",
    "Assessment",
    "Hold",
    "LinkFacts",
    "LinkState",
    "Linker",
    "RiskModels",
    "RiskState",
    "Signal",
    "assess",
    "label",
    "link_keys",
    "observe_link",
]
