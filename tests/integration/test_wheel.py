"""What ships works from the wheel: built, installed in a fresh venv, run outside the checkout.

The package is built from a copy of what the image builds from (pyproject.toml,
README.md and the three packages) plus the test harness a checkout has beside
them, installed with the project's constraints into a new virtualenv in a
temporary directory, and run from another temporary directory: nothing of the
checkout is importable there, so the shipped programs, the JSON Schemas and
every other file the runtime reads must be in the wheel, and the harness must
not be. No broker is needed. Building and installing need the package
registry (pip's cache makes a second run quick); if they fail, the tests skip
on a developer's machine and FAIL under ``CI=true``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.conftest import fail_or_skip

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "streams", "topologies")
HARNESS = "harness"  # beside the packages in a checkout, left out of the wheel
# What the Dockerfile builds from, and the harness: a wheel built from a checkout sees it.
SOURCES = ("pyproject.toml", "README.md", *PACKAGES, HARNESS)
# The harness's modules when they lived in app/, before it became a package of its own.
OLD_HARNESS_PATHS = (
    "app/bench/",
    "app/simulation/",
    "app/localkafka/",
    "app/demo.py",
    "app/soak.py",
    "app/workerproc.py",
    "app/progress.py",
    "app/contract/bench_validate.py",
)
SHIPPED_PROGRAMS = ["bank-rewards", "retail-loyalty"]
BUILD_TIMEOUT_S = 600
INSTALL_TIMEOUT_S = 900


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path  # outside the checkout: the cwd of everything run from the wheel
    env: Mapping[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(arg) for arg in args],
            cwd=self.workdir,
            env=dict(self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _tail(result: subprocess.CompletedProcess[str], lines: int = 30) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment a user of the wheel has: the new venv first on PATH, nothing that
    would import the checkout, and the settings' defaults (no REWARDSTREAM_* override)."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in dropped and not key.startswith("REWARDSTREAM_")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT), "the test must run outside the checkout"

    # Build from a copy, so the checkout gets no build/ directory (whose stale files
    # setuptools would put in the next wheel) and the wheel holds only what the copy has.
    source = base / "source"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)

    dist = base / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(source)],
        cwd=base,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    wheels = sorted(dist.glob("rewardstream-*.whl"))
    if build.returncode != 0 or len(wheels) != 1:
        fail_or_skip(f"the wheel could not be built:\n{_tail(build)}")

    venv = base / "venv"
    created = subprocess.run(
        [sys.executable, "-m", "venv", str(venv)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if created.returncode != 0:
        fail_or_skip(f"no virtualenv could be created:\n{_tail(created)}")

    workdir = base / "elsewhere"
    workdir.mkdir()
    result = Installed(wheel=wheels[0], venv=venv, workdir=workdir, env=_clean_env(venv))
    install = result.run(
        result.python,
        "-m",
        "pip",
        "install",
        "--constraint",
        ROOT / "constraints.txt",
        wheels[0],
        timeout=INSTALL_TIMEOUT_S,
    )
    if install.returncode != 0:
        fail_or_skip(f"the wheel could not be installed:\n{_tail(install)}")
    return result


def test_the_wheel_holds_every_file_of_the_packages(installed: Installed) -> None:
    """Every file under the packages, not only the modules: a data file the runtime reads
    (a program, a schema) that is not declared as package data is missing from an
    installed wheel, though a checkout has it."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        in_wheel = {name for name in wheel.namelist() if name.split("/")[0] in PACKAGES}
    source = installed.wheel.parents[1] / "source"
    in_source = {
        path.relative_to(source).as_posix()
        for package in PACKAGES
        for path in (source / package).rglob("*")
        if path.is_file() and not path.name.startswith(".")
    }
    assert in_source - in_wheel == set(), "declare these as package data in pyproject.toml"
    for name in (
        "app/programs/shipped/retail-loyalty.yaml",
        "app/contract/schemas/event.schema.json",
        "app/console/static/index.html",  # the console's page, script and style
        "app/console/static/console.js",
    ):
        assert name in in_wheel

    # What the runtime reads, read from the installed package, not from the checkout.
    check = installed.run(
        installed.python,
        "-c",
        "\n".join(
            (
                "from importlib import resources",
                "import app",
                "from app.contract.schemas import SCHEMA_NAMES, load_schema",
                "from app.programs import list_builtin, load_builtin",
                "print(app.__file__)",
                "print(','.join(list_builtin()))",
                "for name in list_builtin(): assert load_builtin(name).id == name",
                "for name in SCHEMA_NAMES: assert load_schema(name)['title']",
                "assert resources.files('app.programs').joinpath('shipped/README.md').is_file()",
            )
        ),
    )
    assert check.returncode == 0, _tail(check)
    module_file, programs = check.stdout.splitlines()
    assert Path(module_file).resolve().is_relative_to(installed.venv.resolve()), module_file
    assert programs.split(",") == SHIPPED_PROGRAMS


def test_the_wheel_leaves_the_test_harness_out(installed: Installed) -> None:
    """The benchmarks, simulators, local broker, demo and soak are the test harness: the
    wheel has none of it, and a harness command of the installed package says where it
    runs (a checkout) instead of failing with a traceback."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
    assert [name for name in names if name.split("/")[0] == HARNESS] == []
    assert [name for name in names if name.startswith(OLD_HARNESS_PATHS)] == []
    top_level = [name for name in names if name.endswith(".dist-info/top_level.txt")]
    with zipfile.ZipFile(installed.wheel) as wheel:
        packages = {line for name in top_level for line in wheel.read(name).decode().split()}
    assert packages <= set(PACKAGES), packages

    gone = installed.run(installed.python, "-c", "import harness")
    assert gone.returncode != 0
    assert "No module named 'harness'" in gone.stderr, _tail(gone)

    script = installed.venv / "bin" / "rewardstream"
    for command in (["bench", "--quick"], ["kafka", "up"], ["demo"]):
        run = installed.run(script, *command)
        assert run.returncode == 1, _tail(run)
        assert "Traceback" not in run.stderr, _tail(run)
        assert (
            f"`rewardstream {command[0]}` is part of the project's test harness and runs "
            "from a checkout of the repository (make demo, make bench)"
        ) in run.stderr, _tail(run)
        assert "the installed package has the topics, worker," in run.stderr, _tail(run)

    # The product's commands never import the harness.
    assert installed.run(script, "--help").returncode == 0
    assert installed.run(script, "worker", "--help").returncode == 0
    assert installed.run(script, "console", "--help").returncode == 0


def test_replay_with_the_default_program(installed: Installed) -> None:
    day = 86_400_000
    start = 1772366400000
    events = [
        {"event_id": "w1", "user_id": "u-1", "type": "signup", "ts": start, "channel": "web",
         "attributes": {"age": 34, "country": "DE"}},
        {"event_id": "w2", "user_id": "u-2", "type": "signup", "ts": start + 1000,
         "channel": "mobile", "attributes": {"age": 51, "country": "FR"}},
        {"event_id": "w3", "user_id": "u-1", "type": "page_view", "ts": start + 60_000,
         "channel": "web"},
        {"event_id": "w4", "user_id": "u-1", "type": "purchase", "ts": start + day,
         "channel": "web", "amount": 42.5, "currency": "EUR"},
        {"event_id": "w5", "user_id": "u-2", "type": "session_start", "ts": start + day,
         "channel": "mobile"},
        {"event_id": "w6", "user_id": "u-2", "type": "survey", "ts": start + 2 * day,
         "channel": "email"},
    ]  # fmt: skip
    lines = [orjson.dumps(event) for event in events]
    lines.insert(3, b"not json")  # one dead letter among them
    source = installed.workdir / "events.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = installed.workdir / "records.jsonl"

    # The `rewardstream` script of the new venv, no --program: the default setting.
    replay = installed.run(
        installed.venv / "bin" / "rewardstream", "replay", "--in", source, "--out", out
    )
    assert replay.returncode == 0, _tail(replay)
    assert f"Replayed {len(lines)} lines" in replay.stderr

    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    kinds = Counter(record["kind"] for record in records)
    assert kinds["dead_letter"] == 1
    decisions = [record for record in records if record["kind"] == "decision"]
    assert [d["event_id"] for d in decisions] == [event["event_id"] for event in events]
    assert {d["program"] for d in decisions} == {"retail-loyalty"}
    # The installed program is the checkout's, byte for byte (its SHA-256 is its version).
    shipped = ROOT / "app" / "programs" / "shipped" / "retail-loyalty.yaml"
    version = f"retail-loyalty@{hashlib.sha256(shipped.read_bytes()).hexdigest()[:8]}/"
    assert all(d["model_version"].startswith(version) for d in decisions)


def _readme_library_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## As a library\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "the README's library section has one Python example"
    return str(blocks[0])


def test_the_readmes_library_example(installed: Installed) -> None:
    code = _readme_library_example()
    expected = re.search(r"^# (.+?)(?: \.\.\.)?$", code.splitlines()[-1])
    assert expected, "the example ends with its output as a comment"
    script = installed.workdir / "example.py"
    script.write_text(code, encoding="utf-8")
    run = installed.run(installed.python, script)
    assert run.returncode == 0, _tail(run)
    assert run.stdout.startswith(expected.group(1)), run.stdout
