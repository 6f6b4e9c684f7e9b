"""Run one of Apache Kafka's command-line tools from the jar cache, as ``kafka-run-class.sh`` would.

For example ``org.apache.kafka.tools.ConsoleProducer`` (in the ``kafka-tools`` jar that
``pom.xml`` fetches) or ``kafka.tools.DumpLogSegments``; the test of compression codecs
produces with the former.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from harness.localkafka.broker import BrokerError, _classpath, _require_tool, ensure_jars


def run_tool(
    tool_class: str,
    arguments: Sequence[str],
    *,
    cache_dir: Path,
    version: str,
    stdin: bytes | None = None,
    timeout_s: float = 120.0,
) -> bytes:
    """Run ``tool_class`` with ``arguments`` on the cached classpath of ``version``, feeding
    it ``stdin``; return its standard output. A failure or timeout raises BrokerError."""
    java = _require_tool("java", "Java 17 or newer runs Kafka's tools")
    libs = ensure_jars(cache_dir, version)
    command = [java, "-Xmx256m", "-Djava.awt.headless=true", "-cp", _classpath(libs)]
    command += [tool_class, *arguments]
    try:
        result = subprocess.run(
            command, input=stdin, capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise BrokerError(f"{tool_class} did not finish within {timeout_s:.0f} s") from error
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")[-2000:]
        raise BrokerError(f"{tool_class} exited with {result.returncode}:\n{output}")
    return result.stdout
