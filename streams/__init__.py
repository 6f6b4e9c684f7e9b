"""The worker's runtime: moves bytes between Kafka and the pipeline in ``app/``.

- ``runtime``: the fetch, handle and commit loop, rebalances and recovery; it drives
  the parts below and nothing else;
- ``task``: partition ``p`` of every input, its tables, what it handled and its
  commits, with explicit states (restoring, running, failed, revoked);
- ``writers``: the transactional producers tasks write with, each one fencing and
  closing what an earlier one of its id left open; ``fencing``: the same through the
  consumer group (KIP-447), for the worker's one producer;
- ``housekeeping``: the time-to-live sweep, changelog rolls and local snapshots,
  on the clock;
- ``inputs``: lag, inputs held behind open transactions, and pacing;
- ``health``: the failures that last, said for ``/ready``;
- ``topology``: what a topology declares (stages, inputs, tables, views);
- ``state``: changelog-backed tables kept in memory per partition, and restore;
- ``views``: read-only copies of whole tables, followed from their changelogs;
- ``snapshot``: local snapshots of tables, so a restart reads only the tail;
- ``clients``: the seam to Kafka (aiokafka; a fake in the unit tests);
- ``web``: ``/metrics``, ``/health`` and ``/ready``;
- ``worker``: start-up (topics, model checkpoints, signals) and shutdown.

No business logic lives here.
"""
