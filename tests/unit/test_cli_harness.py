"""The CLI and the test harness: the product's commands never import it, the harness's
commands find it in a checkout from anywhere, and say where they run without one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import cli

CHECKOUT = Path(__file__).resolve().parents[2]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter in ``cwd``, with nothing of the checkout on its path
    but what the editable install maps (the product's packages)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "REWARDSTREAM_"))}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_product_commands_never_import_the_harness(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text("not json\n")
    code = "\n".join(
        (
            "import sys",
            "from app import cli",
            "code = cli.main(['replay', '--in', 'events.jsonl', '--out', 'records.jsonl'])",
            "assert code == 0, code",
            "cli._parser()",
            "assert not [m for m in sys.modules if m.split('.')[0] == 'harness'], 'imported'",
        )
    )
    run = _python(code, tmp_path)
    assert run.returncode == 0, run.stderr
    assert b"dead_letter" in (tmp_path / "records.jsonl").read_bytes()


def test_a_harness_command_finds_the_checkout_from_elsewhere(tmp_path: Path) -> None:
    code = "\n".join(
        (
            "import importlib.util",
            "assert importlib.util.find_spec('harness') is None, 'importable already'",
            "from app import cli",
            "cli._harness('bench')",
            "import harness.bench.throughput",
            "print(harness.__file__)",
        )
    )
    run = _python(code, tmp_path)
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()) == CHECKOUT / "harness" / "__init__.py"


def test_a_harness_command_without_a_checkout_says_where_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An installed wheel: no harness to import, none beside the package.
    monkeypatch.setitem(sys.modules, "harness", None)
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "app" / "cli.py"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench-fraud"]) == 1
    error = capsys.readouterr().err
    assert error == (
        "rewardstream: `rewardstream bench-fraud` is part of the project's test harness and "
        "runs from a checkout of the repository (make demo, make bench); the installed "
        "package has the topics, worker, produce, tail, erase, replay, program and console "
        "commands\n"
    )
