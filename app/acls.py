"""The Kafka ACLs of a deployment: who may write each input, and what the worker may do.

``acl_bindings(settings)`` builds them from the settings, a pure function;
``create_acls`` asks the broker to add them (``rewardstream topics create --acls``).
Every binding allows; the broker must deny what none allows
(``allow.everyone.if.no.acl.found=false``, Kafka's default).

aiokafka 0.14's admin client has no ``create_acls`` (nor the ``acl_resource`` classes
of kafka-python), but its protocol layer has the CreateAcls request, which its client
sends like any other over the deployment's connection (SASL, TLS); Kafka's Java
``kafka-acls`` tool is not needed.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest

from app.kafkaio import ClientOptions
from app.settings import Settings, SettingsError, split_principals


class ResourceType(enum.IntEnum):
    """Kafka's ``ResourceType`` codes, those used here."""

    TOPIC = 2
    GROUP = 3
    TRANSACTIONAL_ID = 5


class Operation(enum.IntEnum):
    """Kafka's ``AclOperation`` codes, those used here."""

    READ = 3
    WRITE = 4
    CREATE = 5
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11


class PatternType(enum.IntEnum):
    """Kafka's ``PatternType`` codes: an exact name, or every name that starts so."""

    LITERAL = 3
    PREFIXED = 4


PERMISSION_ALLOW = 3  # Kafka's AclPermissionType.ALLOW
ANY_HOST = "*"
SECURITY_DISABLED = 54  # Kafka's error code when the broker has no authorizer
CLUSTER_AUTHORIZATION_FAILED = 31


class AclError(RuntimeError):
    """The broker refused to create an ACL."""


@dataclass(frozen=True, order=True)
class AclBinding:
    """One ACL: ``principal`` may do ``operation`` on a resource, from any host."""

    principal: str
    resource_type: ResourceType
    pattern: PatternType
    resource_name: str
    operation: Operation

    def describe(self) -> str:
        what = self.resource_type.name.lower().replace("_", " ")
        name = self.resource_name + ("*" if self.pattern is PatternType.PREFIXED else "")
        return f"{self.principal:<24} {self.operation.name:<6} {what} {name}"


def internal_prefix(settings: Settings) -> str:
    """What the names of the worker's internal topics (``<app_id>-rekeyed``, ``-links``,
    the changelogs) begin with."""
    return f"{settings.app_id}-"


def transactional_id_prefixes(settings: Settings) -> tuple[str, str]:
    """What the worker's transactional ids begin with (streams/runtime.py, its consumer
    group id first): one per worker, ``<app_id>-worker-<id>``, or one per task,
    ``<app_id>-task-<p>`` (``REWARDSTREAM_TRANSACTIONAL_PRODUCERS``). Both are granted,
    so a deployment can move from one to the other, and a worker may take (fence) the
    id of another worker that died holding offsets it takes over."""
    return f"{settings.app_id}-task-", f"{settings.app_id}-worker-"


def worker_principal(settings: Settings) -> str:
    """The worker's principal; there is no default (``topics create --acls`` runs as an
    admin, whose own name is not the worker's)."""
    principals = split_principals(settings.acl_worker_principal)
    if not principals:
        raise SettingsError(
            "--acls needs REWARDSTREAM_ACL_WORKER_PRINCIPAL, the worker's principal "
            "(User:<the worker's REWARDSTREAM_SASL_USERNAME>)"
        )
    return principals[0]


def acl_bindings(settings: Settings) -> list[AclBinding]:
    """Every ACL the deployment needs, sorted; ``REWARDSTREAM_ACL_*`` say who.

    - each producer of a kind may write that kind's topic, and nothing else;
    - the worker reads its inputs, writes its outputs, reads and writes the model
      checkpoints and its internal topics (prefixed ``<app_id>-``), may create each topic
      it uses (it creates any that is missing at start-up) and read and set its configs
      (the erasure bound's retention and compaction), joins its consumer group
      (``<app_id>``) and uses its transactional ids (prefixed ``<app_id>-worker-`` or
      ``<app_id>-task-``).
    """
    worker = worker_principal(settings)
    names = settings.topic_names()
    literal, prefixed = PatternType.LITERAL, PatternType.PREFIXED
    bindings: set[AclBinding] = set()

    def allow(principal: str, pattern: PatternType, name: str, *ops: Operation) -> None:
        bindings.update(AclBinding(principal, ResourceType.TOPIC, pattern, name, op) for op in ops)

    writers = {
        "events": settings.acl_event_producers,
        "fraud-labels": settings.acl_label_producers,
        "consent": settings.acl_consent_producers,
        "members": settings.acl_member_producers,
        "erasure-requests": settings.acl_erasure_producers,
    }
    # The worker sets the erasure bound's configs on every topic it owns (app.kafkaio).
    configs = (Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS)
    for role, principals in writers.items():
        for principal in split_principals(principals):
            allow(principal, literal, names[role], Operation.WRITE)
        allow(worker, literal, names[role], Operation.READ, Operation.CREATE, *configs)
    for role in ("decisions", "fraud-alerts", "dead-letter", "shadow-decisions", "erasures"):
        allow(worker, literal, names[role], Operation.WRITE, Operation.CREATE, *configs)
    owned = (Operation.READ, Operation.WRITE, Operation.CREATE, *configs)
    allow(worker, literal, names["model-checkpoints"], *owned)
    allow(worker, prefixed, internal_prefix(settings), *owned)
    bindings.add(AclBinding(worker, ResourceType.GROUP, literal, settings.app_id, Operation.READ))
    for prefix in transactional_id_prefixes(settings):
        bindings.add(
            AclBinding(worker, ResourceType.TRANSACTIONAL_ID, prefixed, prefix, Operation.WRITE)
        )
    return sorted(bindings)


async def create_acls(
    bootstrap_servers: str, bindings: Sequence[AclBinding], *, client: ClientOptions
) -> None:
    """Add ``bindings`` on the cluster (one already there stays as it is)."""
    kafka = AIOKafkaClient(bootstrap_servers=bootstrap_servers, **client)
    await kafka.bootstrap()
    try:
        for binding in bindings:
            request = CreateAclsRequest(
                int(binding.resource_type),
                binding.resource_name,
                int(binding.pattern),
                binding.principal,
                ANY_HOST,
                int(binding.operation),
                PERMISSION_ALLOW,
            )
            response = await kafka.send(kafka.get_random_node(), request)
            for code, message in response.creation_responses:
                if code:
                    raise AclError(_refusal(binding, code, message, client))
    finally:
        await kafka.close()


def _refusal(binding: AclBinding, code: int, message: str | None, client: ClientOptions) -> str:
    if code == SECURITY_DISABLED:
        return (
            "the broker has no authorizer, so it cannot keep ACLs (nor enforce them): set "
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer "
            "on the brokers and controllers (KRaft), then run `topics create --acls` again"
        )
    if code == CLUSTER_AUTHORIZATION_FAILED:
        who = _caller(client)
        return (
            f"{who} may not create ACLs: it needs ALTER on the cluster, or to be one of "
            "the brokers' super.users (run `topics create --acls` as the cluster's admin)"
        )
    error: Any = for_code(code)
    return (
        f"the broker refused the ACL {' '.join(binding.describe().split())} "
        f"({error.__name__}, error {code}): {message or ''}"
    )


def _caller(client: ClientOptions) -> str:
    username = client.get("sasl_plain_username")
    return f"User:{username}" if username else "this client"
