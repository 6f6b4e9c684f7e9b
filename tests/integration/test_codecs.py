"""Events that third-party clients send compressed with every Kafka codec are decided.

kcat (librdkafka; Debian's ``kcat`` package: ``make kcat-bin``) sends a batch of valid
events with each of gzip, snappy, lz4 and zstd, and Kafka's own console producer (Java,
from the jar cache) one more, to the events topic of one real worker. Every event ends
as exactly one decision and none as a dead letter, and the worker stays up. aiokafka
decodes snappy, lz4 and zstd only with ``cramjam``: without it this test fails.

The broker's own dump of the stored batches shows each event really travelled under its
codec and landed on the partition a Java client would choose for its key. Without kcat
or java the test skips on a developer's machine and FAILS under ``CI=true``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from app.kafkaio import read
from app.settings import Settings
from harness import localkafka
from harness.localkafka.tools import run_tool
from harness.workerproc import WorkerProcess
from tests.conftest import fail_or_skip, required_binary

pytestmark = pytest.mark.kafka

TS = 1_772_366_400_000
USERS = 16
PER_BATCH = 48
DELIMITER = "|"
# Each batch's label (the prefix of its event ids) and the codec it is sent with.
KCAT_CODECS = {"kcat-gzip": "gzip", "kcat-snappy": "snappy", "kcat-lz4": "lz4", "kcat-zstd": "zstd"}
CONSOLE_CODEC = {"console-zstd": "zstd"}


def binary(name: str, how: str) -> str:
    """``required_binary``, with the right hint (its own names ``make prometheus-bin``)."""
    if shutil.which(name) is None:
        fail_or_skip(f"{name} is missing: {how}")
    return required_binary(name)


def batch(label: str) -> list[dict[str, object]]:
    """Valid events of several types, spread over the same users in every batch."""
    events: list[dict[str, object]] = []
    for n in range(PER_BATCH):
        event: dict[str, object] = {
            "event_id": f"{label}-{n}",
            "user_id": f"u-{n % USERS}",
            "type": ("signup", "session_start", "page_view", "purchase")[n % 4],
            "ts": TS + n,
            "channel": "web",
        }
        if event["type"] == "purchase":
            event |= {"amount": 10 + n, "currency": "EUR"}
        events.append(event)
    return events


def keyed_lines(events: list[dict[str, object]]) -> bytes:
    """``user_id|json`` lines, the form both kcat -K and the console producer parse."""
    return b"".join(f"{e['user_id']}{DELIMITER}".encode() + orjson.dumps(e) + b"\n" for e in events)


def stored(settings: Settings, broker: localkafka.BrokerInfo) -> dict[str, tuple[int, str, str]]:
    """event_id -> (partition, codec of its batch, key) as the broker stored them on disk."""
    segments = sorted(Path(broker.home, "data").glob(f"{settings.topic_events}-*/*.log"))
    dump = run_tool(
        "org.apache.kafka.tools.DumpLogSegments",
        ["--print-data-log", "--files", ",".join(map(str, segments))],
        cache_dir=settings.cache_dir,
        version=settings.kafka_version,
    ).decode()
    found: dict[str, tuple[int, str, str]] = {}
    partition, codec = -1, ""
    for line in dump.splitlines():
        if line.startswith("Dumping "):
            partition = int(Path(line.removeprefix("Dumping ")).parent.name.rsplit("-", 1)[1])
        elif header := re.search(r" compresscodec: (\w+) ", line):
            codec = header[1]
        elif record := re.match(r"\| offset: \d+ .*? key: (\S+) payload: (.*)$", line):
            found[orjson.loads(record[2])["event_id"]] = (partition, codec, record[1])
    return found


async def outputs(
    settings: Settings, *, idle_timeout_s: float, until: int | None = None
) -> tuple[Counter[str], list[dict[str, object]]]:
    """Decisions (by event id) and dead letters, read_committed from the start until
    ``until`` records arrived or none came for ``idle_timeout_s``."""
    decided: Counter[str] = Counter()
    dead: list[dict[str, object]] = []
    topics = [settings.topic_decisions, settings.topic_dead_letter]
    # read() is an async generator, closed here (so its consumer stops).
    records = read(settings.bootstrap_servers, topics, idle_timeout_s=idle_timeout_s)
    async with aclosing(records):
        async for record in records:
            if record.topic == settings.topic_dead_letter:
                dead.append(record.document())
            else:
                decided[str(record.document()["event_id"])] += 1
            if until is not None and decided.total() + len(dead) >= until:
                break
    return decided, dead


async def test_every_codec_from_kcat_and_the_console_producer_is_decided(
    kafka_broker: localkafka.BrokerInfo,
    kafka_settings: Settings,
    start_worker: Callable[[Settings, Path], WorkerProcess],
    tmp_path: Path,
) -> None:
    kcat = binary("kcat", "`make kcat-bin` installs it")
    binary("java", "Java 17 or newer runs Kafka's console producer")
    worker = start_worker(kafka_settings, tmp_path / "worker.log")
    worker.wait_ready(timeout_s=120)  # it has created the topics
    bootstrap, topic = kafka_settings.bootstrap_servers, kafka_settings.topic_events

    sent: dict[str, dict[str, object]] = {}
    for label, codec in KCAT_CODECS.items():
        events = batch(label)
        # librdkafka's default partitioner (CRC32) would put users where Java clients don't.
        command = [kcat, "-P", "-b", bootstrap, "-t", topic, "-z", codec, "-K", DELIMITER]
        command += ["-X", "partitioner=murmur2_random"]
        result = subprocess.run(command, input=keyed_lines(events), capture_output=True, timeout=60)
        assert result.returncode == 0, f"kcat -z {codec}: {result.stderr.decode()}"
        sent |= {str(e["event_id"]): e for e in events}
    for label, codec in CONSOLE_CODEC.items():
        events = batch(label)
        run_tool(
            "org.apache.kafka.tools.ConsoleProducer",
            [
                *("--bootstrap-server", bootstrap, "--topic", topic),
                *("--compression-codec", codec),
                *("--reader-property", "parse.key=true"),
                *("--reader-property", f"key.separator={DELIMITER}"),
            ],
            cache_dir=kafka_settings.cache_dir,
            version=kafka_settings.kafka_version,
            stdin=keyed_lines(events),
        )
        sent |= {str(e["event_id"]): e for e in events}

    await outputs(kafka_settings, until=len(sent), idle_timeout_s=30.0)  # wait for them all
    decided, dead = await outputs(kafka_settings, idle_timeout_s=5.0)  # then read all again

    assert dead == [], f"dead letters: {[(d['reason'], d['error']) for d in dead]}"
    missing, repeated = set(sent) - set(decided), decided - Counter(sent.keys())
    assert decided == Counter(sent.keys()), (
        f"{len(missing)} of {len(sent)} events undecided (e.g. {sorted(missing)[:4]}), "
        f"repeated {dict(repeated)}\n{worker.log_tail()}"
    )
    assert worker.process is not None
    assert worker.process.poll() is None, f"the worker exited:\n{worker.log_tail()}"
    assert worker.get("/ready")[0] == 200, "the worker did not survive the compressed batches"

    # Each event was stored in a batch of its codec, on the partition murmur2 gives its key.
    # librdkafka sends a batch uncompressed when compressing would not make it smaller (a
    # batch of one short event, when the partitions' batches split that way): such an
    # event is stored with codec none, and every codec must still have been stored.
    on_disk = stored(kafka_settings, kafka_broker)
    assert set(on_disk) == set(sent)
    codecs = KCAT_CODECS | CONSOLE_CODEC
    partitions = list(range(kafka_settings.partitions))
    seen: dict[str, set[str]] = {label: set() for label in codecs}
    for event_id, (partition, codec, key) in on_disk.items():
        label = event_id.rsplit("-", 1)[0]
        allowed = {codecs[label], "none"} if label in KCAT_CODECS else {codecs[label]}
        assert codec in allowed, event_id
        seen[label].add(codec)
        assert key == sent[event_id]["user_id"], event_id
        assert partition == DefaultPartitioner()(key.encode(), partitions, partitions), event_id
    never = [label for label, codec in codecs.items() if codec not in seen[label]]
    assert not never, f"no event of {never} was stored with its codec"
