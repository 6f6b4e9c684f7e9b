"""rewardstream's engine and its process shell.

Domain code here is pure: it takes events and state and returns records, and
never imports Kafka. Where things live:

- ``settings``: the one frozen settings object, the only reader of the environment.
- ``clock``: injected time.
- ``contract``: the wire records, their JSON Schemas and the event validator.
- ``features``: per-user state and its update from one event.
- ``decisioning``: the engine that turns (state, event) into a decision.
- ``simulation``: synthetic users and events for the demo and the benchmarks.
- ``localkafka``: the local Apache Kafka broker the project starts for itself.
- ``metrics``: every Prometheus metric, defined once; ``rolling``: the rolling-window
  ratios some of them show.
- ``cli``: the ``rewardstream`` command; no business logic.
"""
