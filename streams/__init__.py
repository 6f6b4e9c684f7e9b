"""The worker's runtime: moves bytes between Kafka and the pipeline in ``app/``.

- ``runtime``: the consume-process-produce loop, one Kafka transaction per
  partition and batch, per-partition producers that fence zombies;
- ``packing``: many keyed records in one, for the topics between stages;
- ``state``: changelog-backed tables kept in memory per partition;
- ``web``: ``/metrics``, ``/health`` and ``/ready``;
- ``worker``: start-up (topics, model checkpoints, signals) and shutdown.

No business logic lives here.
"""
