"""The worker's runtime: moves bytes between Kafka and the pipeline in ``app/``.

- ``runtime``: the fetch/commit loop, rebalances, restores and housekeeping;
- ``task``: partition ``p`` of every input, its tables and its transactions
  (one transactional producer per task, which fences zombies);
- ``topology``: what a topology declares (stages, inputs, tables, views);
- ``state``: changelog-backed tables kept in memory per partition, and restore;
- ``views``: read-only copies of whole tables, followed from their changelogs;
- ``snapshot``: local snapshots of tables, so a restart reads only the tail;
- ``clients``: the seam to Kafka (aiokafka; a fake in the unit tests);
- ``web``: ``/metrics``, ``/health`` and ``/ready``;
- ``worker``: start-up (topics, model checkpoints, signals) and shutdown.

No business logic lives here.
"""
