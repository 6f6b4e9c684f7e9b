"""Thin Faust agents: read a message, call the pipeline in ``app/``, send its outputs.

No business logic lives here. ``build_worker_app(settings)`` returns a ready Faust
app with the topology of ``topologies/`` and the agents registered on it.
"""

from streams.worker import build_worker_app

__all__ = ["build_worker_app"]
