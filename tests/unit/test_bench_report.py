"""The commit a benchmark's figures are labelled with (harness.bench.report)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.bench.report import commit


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _git(tmp_path, "init", "-q")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "benchmarks.md").write_text("# Benchmarks\n")
    (tmp_path / "engine.py").write_text("STEP = 0.2\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    (tmp_path / "tools").mkdir()
    monkeypatch.chdir(tmp_path / "tools")  # a bench run from below the top still sees it all
    return tmp_path


def test_figures_a_run_wrote_are_not_a_change_to_what_it_measured(repo: Path) -> None:
    head = _git(repo, "rev-parse", "--short", "HEAD")
    assert commit() == head
    (repo / "docs" / "benchmarks.md").write_text("# Benchmarks\n\n## a run\n")
    assert commit() == head


def test_a_changed_source_file_marks_the_commit(repo: Path) -> None:
    (repo / "engine.py").write_text("STEP = 0.05\n")
    assert commit() == _git(repo, "rev-parse", "--short", "HEAD") + "+changes"
