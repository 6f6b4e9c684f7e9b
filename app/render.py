"""Readable one-line renderings of output records, for `rewardstream tail` and the demo."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def _when(ts_ms: Any) -> str:
    if not isinstance(ts_ms, int):
        return "-"
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def render(record: dict[str, Any]) -> str:
    """One line for a decision, fraud alert or dead letter."""
    kind = record.get("kind")
    if kind == "decision":
        return render_decision(record)
    if kind == "fraud_alert":
        return (
            f"{_when(record.get('ts'))}  ALERT  {record.get('user_id')}  "
            f"score {record.get('score', 0):.2f}  {', '.join(record.get('reasons', []))}"
        )
    if kind == "dead_letter":
        source = record.get("source", {})
        return (
            f"DEAD  {record.get('reason')}  {source.get('topic')}[{source.get('partition')}]"
            f"@{source.get('offset')}  {record.get('error')}"
        )
    return f"?  {record}"


def render_decision(record: dict[str, Any]) -> str:
    action = record.get("action") or "no reward"
    value = f" {record['value']:.2f}" if record.get("action") else ""
    channel = f" via {record['channel']}" if record.get("channel") else ""
    return (
        f"{_when(record.get('ts'))}  {record.get('status', '?'):<7}  {record.get('user_id')}  "
        f"{action}{value}{channel}  risk {record.get('risk', 0):.2f}  {record.get('explanation')}"
    )
