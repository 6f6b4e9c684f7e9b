"""Synthetic users and events, seeded, for the demo, the tests and the benchmarks."""

from app.simulation.events import INVALID_KINDS, EventSimulator, SimulatorConfig

__all__ = ["INVALID_KINDS", "EventSimulator", "SimulatorConfig"]
