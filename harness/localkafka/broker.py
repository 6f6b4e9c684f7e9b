"""Fetch, start, check and stop one local Apache Kafka broker (KRaft, broker+controller).

The jars come from Maven Central through the machine's ``mvn`` and are cached
per version under the cache directory, outside any work tree. Each broker lives
in a *home* directory holding its properties, data, log and ``broker.json``
(pid and ports), so several brokers (a demo, a test session) can run side by side.
The broker only ever listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

LOOPBACK = "127.0.0.1"
STATE_FILE = "broker.json"

# Brokers this process started, by pid: holding the Popen keeps it from warning when
# collected while the broker (deliberately) runs on, and lets stop() reap it.
_STARTED_HERE: dict[int, subprocess.Popen[bytes]] = {}


class BrokerError(RuntimeError):
    """The local broker could not be fetched, started, reached or stopped."""


@dataclass(frozen=True)
class BrokerInfo:
    """What ``broker.json`` records about a running broker."""

    pid: int
    port: int
    controller_port: int
    version: str
    home: str
    sasl_port: int | None = None  # a SASL_PLAINTEXT listener with SCRAM-SHA-256, if asked for
    ssl_port: int | None = None  # a TLS listener with a self-signed certificate, if asked for
    ca_file: str | None = None  # that certificate, as PEM, for clients to trust

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str | None:
        return None if self.sasl_port is None else f"{LOOPBACK}:{self.sasl_port}"

    @property
    def ssl_bootstrap_servers(self) -> str | None:
        return None if self.ssl_port is None else f"{LOOPBACK}:{self.ssl_port}"


# ---------------------------------------------------------------- jars


def jar_dir(cache_dir: Path, version: str) -> Path:
    return cache_dir / f"kafka-{version}" / "libs"


def ensure_jars(cache_dir: Path, version: str, *, quiet: bool = True) -> Path:
    """Resolve the broker's jars with Maven once per version; return their folder."""
    libs = jar_dir(cache_dir, version)
    if (libs / ".complete").exists():
        return libs
    mvn = _require_tool("mvn", "Maven is needed once to fetch Apache Kafka from Maven Central")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    with _file_lock(work / ".lock"):
        if (libs / ".complete").exists():  # another process fetched them meanwhile
            return libs
        partial = work / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        pom = work / "pom.xml"
        pom.write_bytes(resources.files(__package__).joinpath("pom.xml").read_bytes())
        command = [
            mvn,
            "-B",
            *(["-q"] if quiet else []),
            "-f",
            str(pom),
            f"-Dkafka.version={version}",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
            "dependency:copy-dependencies",
        ]
        result = subprocess.run(command, cwd=work, capture_output=quiet, text=True, check=False)
        if result.returncode != 0:
            detail = (result.stdout or "")[-2000:] if quiet else ""
            raise BrokerError(f"Maven could not resolve Apache Kafka {version}:\n{detail}")
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        (libs / ".complete").write_text(version)
    return libs


# ---------------------------------------------------------------- lifecycle


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def start(
    home: Path,
    *,
    cache_dir: Path,
    version: str,
    port: int = 9092,
    heap: str = "512m",
    timeout_s: float = 90.0,
    extra_properties: Mapping[str, str] | None = None,
    scram_users: Mapping[str, str] | None = None,
    tls: bool = False,
    acl_super_users: Sequence[str] | None = None,
) -> BrokerInfo:
    """Start a broker in ``home`` (port 0 picks a free one) and wait until it answers.

    ``scram_users`` (name -> password) adds a second listener, SASL_PLAINTEXT with
    SCRAM-SHA-256, whose credentials are written when the storage is formatted. ``tls``
    adds an SSL listener with a self-signed certificate for 127.0.0.1, made with the
    JDK's keytool; ``BrokerInfo.ca_file`` is the certificate for clients to trust.

    ``acl_super_users`` (principals, such as ``User:admin``) turns on Kafka ACLs: the
    KRaft authorizer, and a request no ACL allows is refused. Those principals bypass the
    ACLs (the admin that creates topics and ACLs), and so does ``User:ANONYMOUS``, the
    principal of every connection that does not authenticate: the controller's listener
    and the broker's own (inter-broker) one, which must be, but also the plain client
    listener and the TLS one (no client certificates), which share it. ACLs therefore
    bind the SASL listener only; the others stay open to this machine's processes.
    """
    running = status(home)
    if running is not None:
        raise BrokerError(
            f"a broker already runs from this home (pid {running.pid}, port {running.port})"
        )
    java = _require_tool("java", "Java 17 or newer runs the Kafka broker")
    libs = ensure_jars(cache_dir, version)
    port = port or free_port()
    controller_port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    extra = dict(extra_properties or {})
    listeners: dict[str, int] = {}
    ca_file = None
    if scram_users:
        listeners["SASL_PLAINTEXT"] = free_port()
        extra |= _SCRAM_PROPERTIES
    if acl_super_users is not None:
        if not scram_users:
            raise BrokerError("ACLs need a listener that authenticates: pass scram_users")
        extra |= _authorizer_properties(acl_super_users)
    if tls:
        listeners["SSL"] = free_port()
        keystore, ca_file = _self_signed(home)
        extra |= {
            "ssl.keystore.location": str(keystore),
            "ssl.keystore.password": _KEYSTORE_PASSWORD,
            "ssl.keystore.type": "PKCS12",
        }
    if listeners:
        extra |= _listener_properties(port, controller_port, listeners)
    properties = _write_properties(home, port, controller_port, extra)
    _format_storage_once(java, libs, home, properties, _scram_arguments(scram_users or {}))
    process = _spawn(java, libs, home, properties, heap)
    _STARTED_HERE[process.pid] = process
    info = BrokerInfo(
        process.pid,
        port,
        controller_port,
        version,
        str(home),
        listeners.get("SASL_PLAINTEXT"),
        listeners.get("SSL"),
        None if ca_file is None else str(ca_file),
    )
    (home / STATE_FILE).write_text(json.dumps(asdict(info)))
    try:
        _wait_until_answers(info, process, timeout_s)
    except BrokerError:
        stop(home)
        _STARTED_HERE.pop(process.pid, None)
        process.kill()
        process.wait()
        raise
    return info


def start_cluster(
    home: Path,
    *,
    nodes: int,
    cache_dir: Path,
    version: str,
    heap: str = "512m",
    timeout_s: float = 120.0,
) -> list[BrokerInfo]:
    """A KRaft cluster of ``nodes`` broker+controllers on loopback, one home per node
    (``home/node-<id>``, each stopped with :func:`stop`). Internal topics are replicated
    to every node (at most three) and ``min.insync.replicas`` is one less, so the cluster
    keeps accepting ``acks=all`` writes with one node down."""
    java = _require_tool("java", "Java 17 or newer runs the Kafka broker")
    libs = ensure_jars(cache_dir, version)
    cluster_id = _cluster_id()
    ports = [(free_port(), free_port()) for _ in range(nodes)]
    voters = ",".join(f"{n + 1}@{LOOPBACK}:{c}" for n, (_, c) in enumerate(ports))
    replicas = min(nodes, 3)
    shared = {
        "controller.quorum.voters": voters,
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(max(1, replicas - 1)),
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(max(1, replicas - 1)),
    }
    started: list[tuple[BrokerInfo, subprocess.Popen[bytes]]] = []
    for n, (port, controller_port) in enumerate(ports):
        node_home = home / f"node-{n + 1}"
        node_home.mkdir(parents=True, exist_ok=True)
        properties = _write_properties(
            node_home, port, controller_port, shared | {"node.id": str(n + 1)}
        )
        _format_storage_once(java, libs, node_home, properties, cluster_id=cluster_id)
        process = _spawn(java, libs, node_home, properties, heap)
        _STARTED_HERE[process.pid] = process
        info = BrokerInfo(process.pid, port, controller_port, version, str(node_home))
        (node_home / STATE_FILE).write_text(json.dumps(asdict(info)))
        started.append((info, process))
    try:
        for info, process in started:  # a quorum forms only once enough nodes run
            _wait_until_answers(info, process, timeout_s)
    except BrokerError:
        for info, _ in started:
            stop(Path(info.home))
        raise
    return [info for info, _ in started]


def status(home: Path) -> BrokerInfo | None:
    """The broker running from ``home``, or None when there is none."""
    try:
        info = BrokerInfo(**json.loads((home / STATE_FILE).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return info if _is_our_broker(info.pid, home) else None


def stop(home: Path, *, timeout_s: float = 30.0, discard: bool = False) -> bool:
    """Stop the broker of ``home`` by its own pid; True if one was running.

    With ``discard`` (its data is thrown away next, as after a test) it is killed at
    once: a clean shutdown flushes and closes every partition, about 20 s after a test
    session has made a few hundred.
    """
    info = status(home)
    (home / STATE_FILE).unlink(missing_ok=True)
    if info is None:
        return False
    _signal(info.pid, signal.SIGKILL if discard else signal.SIGTERM)
    if not _wait_for_exit(info.pid, timeout_s):
        _signal(info.pid, signal.SIGKILL)
        _wait_for_exit(info.pid, 10.0)
    child = _STARTED_HERE.pop(info.pid, None)
    if child is not None:
        child.wait(timeout=10)
    return True


def answers(bootstrap_servers: str, timeout_s: float = 5.0) -> bool:
    """True when a Kafka broker at ``bootstrap_servers`` replies to a metadata request."""
    return asyncio.run(_metadata_ok(bootstrap_servers, timeout_s))


# ---------------------------------------------------------------- internals


def _write_properties(
    home: Path, port: int, controller_port: int, extra: Mapping[str, str]
) -> Path:
    properties = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(home / "data"),
        # Topics are created by `rewardstream topics create` or the worker, never by a typo.
        "auto.create.topics.enable": "false",
        "num.partitions": "4",
        # One broker: internal topics cannot have more than one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    properties.update(extra)
    path = home / "server.properties"
    path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    return path


def _cluster_id() -> str:
    # Kafka's own format: 16 random bytes, URL-safe base64, no padding, never starting with "-".
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not candidate.startswith("-"):
            return candidate


def _classpath(libs: Path) -> str:
    return str(libs / "*")


_SCRAM_PROPERTIES = {
    "sasl.enabled.mechanisms": "SCRAM-SHA-256",
    "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": (
        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    ),
}
# The principal of a connection that does not authenticate. The controller and
# inter-broker listeners are PLAINTEXT, so with ACLs it must be a super user.
_UNAUTHENTICATED_PRINCIPAL = "User:ANONYMOUS"


def _authorizer_properties(super_users: Sequence[str]) -> dict[str, str]:
    """The KRaft authorizer, denying what no ACL allows, with ``super_users`` exempt."""
    exempt = dict.fromkeys([_UNAUTHENTICATED_PRINCIPAL, *super_users])
    for principal in exempt:
        if ":" not in principal or ";" in principal:
            raise BrokerError(f"{principal!r} is not a principal such as User:admin")
    return {
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": ";".join(exempt),
        "allow.everyone.if.no.acl.found": "false",
    }


# Protects only a throwaway keystore of a local test broker.
_KEYSTORE_PASSWORD = "rewardstream-local"


def _listener_properties(
    port: int, controller_port: int, extra: Mapping[str, int]
) -> dict[str, str]:
    """Listeners beside the plain one, each named after its security protocol."""
    named = {"PLAINTEXT": port, **extra}
    return {
        "listeners": ",".join(f"{name}://{LOOPBACK}:{p}" for name, p in named.items())
        + f",CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": ",".join(f"{name}://{LOOPBACK}:{p}" for name, p in named.items()),
        "listener.security.protocol.map": ",".join(f"{name}:{name}" for name in named)
        + ",CONTROLLER:PLAINTEXT",
    }


def _self_signed(home: Path) -> tuple[Path, Path]:
    """A PKCS12 keystore with a key and self-signed certificate for 127.0.0.1, and that
    certificate as PEM."""
    keytool = _require_tool("keytool", "the JDK's keytool makes the local TLS certificate")
    keystore, certificate = home / "broker.p12", home / "broker-ca.pem"
    if not keystore.exists():
        _run_tool(
            [
                keytool,
                "-genkeypair",
                "-alias",
                "broker",
                "-keyalg",
                "RSA",
                "-keysize",
                "2048",
                "-validity",
                "30",
                "-dname",
                "CN=127.0.0.1",
                "-ext",
                "SAN=ip:127.0.0.1",
                "-storetype",
                "PKCS12",
                "-keystore",
                str(keystore),
                "-storepass",
                _KEYSTORE_PASSWORD,
            ]
        )
    _run_tool(
        [
            keytool,
            "-exportcert",
            "-rfc",
            "-alias",
            "broker",
            "-keystore",
            str(keystore),
            "-storepass",
            _KEYSTORE_PASSWORD,
            "-file",
            str(certificate),
        ]
    )
    return keystore, certificate


def _run_tool(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(f"{Path(command[0]).name} failed: {result.stdout}{result.stderr}")


def _scram_arguments(users: Mapping[str, str]) -> list[str]:
    arguments: list[str] = []
    for name, password in users.items():
        arguments += ["--add-scram", f"SCRAM-SHA-256=[name={name},password={password}]"]
    return arguments


def _format_storage_once(
    java: str,
    libs: Path,
    home: Path,
    properties: Path,
    extra: list[str] | None = None,
    cluster_id: str | None = None,
) -> None:
    if (home / "data" / "meta.properties").exists():
        return
    command = [
        java,
        "-cp",
        _classpath(libs),
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id or _cluster_id(),
        "-c",
        str(properties),
        *(extra or []),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(
            f"could not format KRaft storage in {home}: {result.stdout}{result.stderr}"
        )


def _spawn(
    java: str, libs: Path, home: Path, properties: Path, heap: str
) -> subprocess.Popen[bytes]:
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    log4j = home / "log4j2.yaml"
    log4j.write_bytes(resources.files(__package__).joinpath("log4j2.yaml").read_bytes())
    command = [
        java,
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={logs}",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        _classpath(libs),
        "kafka.Kafka",
        str(properties),
    ]
    with open(logs / "stdout.log", "ab") as output:
        # A new session: the broker outlives the command that started it (`kafka up`).
        return subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=home,
        )


def _wait_until_answers(
    info: BrokerInfo, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerError(f"the broker exited with {process.returncode}:\n{_log_tail(info)}")
        if _port_open(info.port) and answers(info.bootstrap_servers, timeout_s=5.0):
            return
        time.sleep(0.3)
    raise BrokerError(f"the broker did not answer within {timeout_s:.0f} s:\n{_log_tail(info)}")


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True
    return False


async def _metadata_ok(bootstrap_servers: str, timeout_s: float) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient  # imported late: `kafka status` stays quick

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    except Exception:  # any failure means "does not answer yet"
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return True


def _log_tail(info: BrokerInfo, lines: int = 30) -> str:
    logs = Path(info.home) / "logs"
    text = ""
    for name in ("stdout.log", "server.log"):
        with contextlib.suppress(FileNotFoundError):
            text += "\n".join((logs / name).read_text(errors="replace").splitlines()[-lines:])
    return text


def _is_our_broker(pid: int, home: Path) -> bool:
    # The pid file may be stale and the pid reused: check it is a Kafka of this home.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline and str(home / "server.properties").encode() in cmdline


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_for_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return True
        time.sleep(0.1)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"`{name}` is not on PATH. {why}.")
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
