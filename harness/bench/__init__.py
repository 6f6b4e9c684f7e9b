"""Benchmarks: commands that measure and write figures, never timed tests.

- :mod:`harness.bench.learning`: learning quality of the engine against a random
  policy and an oracle, in a closed loop of simulated users.
- :mod:`harness.bench.throughput`: throughput against a raw Kafka loop, latency under
  open-loop load, replay speed and state per user, in one run
  (:mod:`harness.bench.histogram` counts its latencies), beside latency anchors measured
  in the same run: plain aiokafka loops and a quixstreams app, each its own process
  (:mod:`harness.bench.anchors`, :mod:`harness.bench.anchor_aiokafka`,
  :mod:`harness.bench.anchor_quix`).
"""
