"""Synthetic users and events, seeded, for the demo, the tests and the benchmarks."""

from harness.simulation.attacks import AttackConfig, LabelledEvent, attacker_accounts, ground_truth
from harness.simulation.events import INVALID_KINDS, EventSimulator, SimulatorConfig

__all__ = [
    "INVALID_KINDS",
    "AttackConfig",
    "EventSimulator",
    "LabelledEvent",
    "SimulatorConfig",
    "attacker_accounts",
    "ground_truth",
]
