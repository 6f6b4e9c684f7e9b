"""Benchmarks: commands that measure and write figures, never timed tests.

- :mod:`app.bench.learning`: learning quality of the engine against a random
  policy and an oracle, in a closed loop of simulated users.
- :mod:`app.bench.throughput`: throughput against a raw Kafka loop, latency under
  open-loop load, replay speed and state per user, in one run
  (:mod:`app.bench.histogram` counts its latencies), beside latency anchors measured
  in the same run: plain aiokafka loops and a quixstreams app, each its own process
  (:mod:`app.bench.anchors`, :mod:`app.bench.anchor_aiokafka`,
  :mod:`app.bench.anchor_quix`).
"""
