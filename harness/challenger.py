"""A challenger program for the demo and the tests: the live program under another id,
choosing by softmax exploration instead of epsilon-greedy (app/shadow.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from app.programs.loader import BUILTIN_DIR


def write_challenger(
    live: str, into: Path, *, exploration: str = "softmax", temperature: float = 0.1
) -> Path:
    """The shipped program ``live`` as ``<live>-challenger``, with its learning block's
    exploration changed; written into ``into`` and its path returned."""
    document = yaml.safe_load((BUILTIN_DIR / f"{live}.yaml").read_text())
    document["id"] = f"{live}-challenger"
    document["name"] = f"{document.get('name', live)} (challenger)"
    learning = document.setdefault("learning", {})
    learning["exploration"] = exploration
    if exploration == "softmax":
        learning["temperature"] = temperature
    path = into / f"{live}-challenger.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
