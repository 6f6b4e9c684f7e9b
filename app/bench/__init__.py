"""Benchmarks: commands that measure and write figures, never timed tests.

- :mod:`app.bench.learning`: learning quality of the engine against a random
  policy and an oracle, in a closed loop of simulated users.
"""
