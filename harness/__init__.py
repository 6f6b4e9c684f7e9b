"""rewardstream's test harness: what the project runs to test, measure and show itself.

Not part of the product: the wheel (and so the image) does not ship this package;
it runs from a checkout of the repository, where ``rewardstream`` finds it (``make demo``,
``make bench``). The product (``app``, ``streams``, ``topologies``) never imports it.

- ``bench``: the benchmarks (throughput, latency and their anchors, state per user,
  restart, learning quality, fraud detection, event validation speed) and their reports.
- ``simulation``: seeded synthetic users and events, the closed loop of users who
  answer their decisions, and the attack generator (labelled fraud traffic).
- ``localkafka``: the local Apache Kafka broker launcher (jars from Maven Central,
  one KRaft broker or a cluster on loopback) for development, the tests and the demo.
- ``demo`` and ``soak``: ``rewardstream demo`` and ``rewardstream soak``.
- ``workerproc``: a ``rewardstream worker`` as a child process, and a broker of its own.
- ``progress``: a one-line progress bar for the simulator.
- ``k8s_rules``: writes the Prometheus Operator's copy of the alert rules
  (k8s/monitoring/prometheusrule.yaml) from deploy/prometheus/alerts.yml.
- ``group_fencing``: a check by hand that the broker fences a zombie's transaction
  through the consumer group's generation when aiokafka is made to ask (KIP-447).
"""
