"""rewardstream's engine and its process shell.

Domain code here is pure: it takes events and state and returns records, and
never imports Kafka. Where things live:

- ``settings``: the one frozen settings object, the only reader of the environment.
- ``clock``: injected time.
- ``contract``: the wire records, their JSON Schemas and the event validator.
- ``features``: per-user state and its update from one event.
- ``decisioning``: the engine that turns (state, event) into a decision.
- ``metrics``: every Prometheus metric, defined once; ``rolling``: the rolling-window
  ratios some of them show.
- ``cli``: the ``rewardstream`` command; no business logic.

The simulators, the benchmarks, the local Kafka broker, the demo and the soak are the
test harness, the top-level package ``harness`` of a checkout, which the wheel does not
ship; nothing here imports it but the harness's own commands in ``cli``.
"""
