"""Benchmarks: commands that measure and write figures, never timed tests.

- :mod:`harness.bench.learning`: learning quality of the engine against a random
  policy and an oracle, in a closed loop of simulated users.
- :mod:`harness.bench.throughput`: throughput against a raw Kafka loop, latency under
  open-loop load, replay speed and state per user, in one run
  (:mod:`harness.bench.histogram` counts its latencies), beside latency anchors measured
  in the same run: plain aiokafka loops and a quixstreams app, each its own process
  (:mod:`harness.bench.anchors`, :mod:`harness.bench.anchor_aiokafka`,
  :mod:`harness.bench.anchor_quix`); :mod:`harness.bench.restart` times a restart with
  many users' state, :mod:`harness.bench.report` writes the figures.
- :mod:`harness.bench.fraud`: what attackers take, per attack scenario.
- :mod:`harness.bench.ope`: offline evaluation's estimates against the true value.
- :mod:`harness.bench.experiment`: an experiment's lift interval and sample-ratio test
  against the truth.
- :mod:`harness.bench.erasure`: how long an erasure waits for its receipt.
- :mod:`harness.bench.console`: the console's user lookup with a million users.
- By hand, not in a report: :mod:`harness.bench.rows` (stored form of user rows) and
  :mod:`harness.bench.validate_speed` (event validation), both timed by
  :mod:`harness.bench.timing`; :mod:`harness.bench.steady` (latency and CPU per event
  under steady load, settings compared in alternated runs); :mod:`harness.bench.aging`
  (replay's CPU per event, chunk by chunk, as the state fills).
"""
