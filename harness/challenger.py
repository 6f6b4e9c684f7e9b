"""A challenger program for the demo and the tests: the live program under another id,
choosing by softmax exploration instead of epsilon-greedy (app/shadow.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from app.programs.loader import BUILTIN_DIR


def write_challenger(
    live: str, into: Path, *, exploration: str = "softmax", temperature: float = 0.1
) -> Path:
    """The program ``live`` (a shipped program's id or a YAML file) as
    ``<its id>-challenger``, with its learning block's exploration changed; written into
    ``into`` and its path returned."""
    source = Path(live) if live.endswith((".yaml", ".yml")) else BUILTIN_DIR / f"{live}.yaml"
    document = yaml.safe_load(source.read_text())
    live_id = document["id"]
    document["id"] = f"{live_id}-challenger"
    document["name"] = f"{document.get('name', live_id)} (challenger)"
    learning = document.setdefault("learning", {})
    learning["exploration"] = exploration
    if exploration == "softmax":
        learning["temperature"] = temperature
    path = into / f"{live_id}-challenger.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
