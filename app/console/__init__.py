"""The console: a web page for the people who run rewards (``rewardstream console``).

A loyalty manager looks a user up and reads each decision and why (and why not the
other rewards); a fraud analyst works the queue of held rewards and releases or
confirms each through a ``fraud_label`` event, the same authorised path as any
analyst's label; both watch the program's budgets, grants, alerts and latency.

It is a process of its own, never part of a worker (docs/console.md says why). What
lives here, from the pure core outwards:

- :mod:`app.console.packed`: decision and alert records kept deflated in memory.
- :mod:`app.console.index`: :class:`ConsoleIndex`, per user the newest decisions and
  alerts, the open holds, and what erasure receipts say must be forgotten. Pure: fed
  records, asked questions; it never reads Kafka or a clock.
- :mod:`app.console.program`: :class:`ProgramStats`, the program view: budgets and
  stock left from the ledger changelog, grants, redemptions and alerts over the last
  hour, decision latency.
- :mod:`app.console.words`: reason codes as words ("why not this reward").
- :mod:`app.console.labels`: the ``fraud_label`` event a release or a confirmation sends.
- :mod:`app.console.reader`: the Kafka side (read_committed reader, label producer),
  on an asyncio loop in a thread of its own.
- :mod:`app.console.web`: the HTTP side: the page, its JSON endpoints and the login.
- :mod:`app.console.service`: wires them together for the command.

The promise: every view the page shows is a JSON endpoint first (docs/console.md),
nothing is written but ``fraud_label`` events, and a user's data goes from the index
when the user's erasure receipt arrives.
"""
