"""The ACLs `rewardstream topics create --acls` grants, built from settings alone.

Each producer may write its own input and nothing else; the worker may do what its
topology needs (checked against the topology itself, so a new topic, table or stage
cannot go without its ACL) and may not write its inputs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import cast

import pytest

from app import cli
from app.acls import (
    AclBinding,
    Operation,
    PatternType,
    ResourceType,
    acl_bindings,
    internal_prefix,
    transactional_id_prefixes,
)
from app.kafkaio import topic_requests
from app.pipeline import Pipeline
from app.settings import Settings, SettingsError, split_principals
from topologies import build

WORKER = "User:rewardstream-worker"
PRODUCERS = {
    "events": ("User:shop", "User:app"),
    "fraud-labels": ("User:risk-team",),
    "consent": ("User:consent-service",),
    "members": ("User:member-import",),
    "erasure-requests": ("User:privacy-service",),
}


def settings(**overrides: str) -> Settings:
    environ = {
        "HOME": "/home/someone",
        "REWARDSTREAM_ACL_EVENT_PRODUCERS": "User:shop, User:app",
        "REWARDSTREAM_ACL_LABEL_PRODUCERS": "User:risk-team",
        "REWARDSTREAM_ACL_CONSENT_PRODUCERS": "User:consent-service",
        "REWARDSTREAM_ACL_MEMBER_PRODUCERS": "User:member-import",
        "REWARDSTREAM_ACL_ERASURE_PRODUCERS": "User:privacy-service",
        "REWARDSTREAM_ACL_WORKER_PRINCIPAL": WORKER,
    }
    return Settings.from_env(environ=environ | overrides)


def allows(
    bindings: list[AclBinding], principal: str, kind: ResourceType, name: str, op: Operation
) -> bool:
    """Whether ``bindings`` let ``principal`` do ``op`` on a resource, as Kafka decides it
    (a PREFIXED pattern matches every name that begins so)."""
    return any(
        b.principal == principal
        and b.resource_type is kind
        and b.operation is op
        and (
            b.resource_name == name
            if b.pattern is PatternType.LITERAL
            else name.startswith(b.resource_name)
        )
        for b in bindings
    )


def test_each_producer_may_write_its_own_input_and_nothing_else() -> None:
    s = settings()
    bindings = acl_bindings(s)
    names = s.topic_names()
    for role, principals in PRODUCERS.items():
        for principal in principals:
            mine = [b for b in bindings if b.principal == principal]
            assert mine == [
                AclBinding(
                    principal, ResourceType.TOPIC, PatternType.LITERAL, names[role], Operation.WRITE
                )
            ]


def test_the_worker_may_do_what_its_topology_needs() -> None:
    s = settings(REWARDSTREAM_APP_ID="loyalty-eu", REWARDSTREAM_TOPIC_EVENTS="shop-events")
    bindings = acl_bindings(s)
    topology, config, _ = build(s, cast(Pipeline, None))  # the pipeline is only kept
    names = config.topic_of_role

    def can(kind: ResourceType, name: str, op: Operation) -> bool:
        return allows(bindings, WORKER, kind, name, op)

    topic = ResourceType.TOPIC
    for role in topology.input_roles():
        assert can(topic, names[role], Operation.READ), role
    for role in config.output_roles:
        assert can(topic, names[role], Operation.WRITE), role
    for table in topology.tables():
        changelog = topology.changelog_of(table)
        assert can(topic, changelog, Operation.READ)
        assert can(topic, changelog, Operation.WRITE)
    checkpoints = s.topic_model_checkpoints
    assert can(topic, checkpoints, Operation.READ)
    assert can(topic, checkpoints, Operation.WRITE)
    # It creates any topic missing at start-up (the broker wants CREATE even for one that
    # exists), and describes them all to check their partitions.
    for request in topic_requests(s):
        assert can(topic, request.name, Operation.CREATE), request.name
        # READ or WRITE implies DESCRIBE.
        assert can(topic, request.name, Operation.READ) or can(topic, request.name, Operation.WRITE)
        # It sets the erasure bound's configs on each (app.kafkaio.ensure_topics).
        assert can(topic, request.name, Operation.DESCRIBE_CONFIGS), request.name
        assert can(topic, request.name, Operation.ALTER_CONFIGS), request.name
    assert can(ResourceType.GROUP, config.group_id, Operation.READ)
    for partition in range(s.partitions):  # streams/runtime.py names them so
        assert can(
            ResourceType.TRANSACTIONAL_ID, f"{config.group_id}-task-{partition}", Operation.WRITE
        )
    worker_id = f"{config.group_id}-worker-{config.worker_id}"  # one producer per worker
    assert worker_id.startswith(f"{config.group_id}-worker-")
    assert can(ResourceType.TRANSACTIONAL_ID, worker_id, Operation.WRITE)


def test_only_the_member_system_may_write_the_members_topic_and_the_worker_reads_it() -> None:
    """A member_imported event makes an account look old (its new-account pending period
    counts from membership): no producer of user activity may send one."""
    s = settings(REWARDSTREAM_TOPIC_MEMBERS="crm-members")
    bindings = acl_bindings(s)
    topology, config, _ = build(s, cast(Pipeline, None))
    assert "members" in topology.input_roles()
    assert config.topic_of_role["members"] == "crm-members"
    assert "crm-members" in {request.name for request in topic_requests(s)}
    writers = {
        b.principal
        for b in bindings
        if b.resource_name == "crm-members" and b.operation is Operation.WRITE
    }
    assert writers == {"User:member-import"}
    for principal in (*PRODUCERS["events"], *PRODUCERS["fraud-labels"], *PRODUCERS["consent"]):
        assert not allows(bindings, principal, ResourceType.TOPIC, "crm-members", Operation.WRITE)
    assert allows(bindings, WORKER, ResourceType.TOPIC, "crm-members", Operation.READ)
    # Without the setting, nobody but super users writes it.
    empty = settings(REWARDSTREAM_ACL_MEMBER_PRODUCERS="")
    assert not [
        b
        for b in acl_bindings(empty)
        if b.resource_name == empty.topic_members and b.operation is Operation.WRITE
    ]


def test_the_worker_may_not_write_its_inputs_nor_act_as_another_deployment() -> None:
    s = settings(REWARDSTREAM_APP_ID="loyalty")
    bindings = acl_bindings(s)
    for role in PRODUCERS:
        assert not allows(
            bindings, WORKER, ResourceType.TOPIC, s.topic_names()[role], Operation.WRITE
        )
    assert not allows(bindings, WORKER, ResourceType.GROUP, "loyalty-eu", Operation.READ)
    for other in ("other-task-0", "other-worker-0"):
        assert not allows(bindings, WORKER, ResourceType.TRANSACTIONAL_ID, other, Operation.WRITE)
    assert not allows(bindings, WORKER, ResourceType.TOPIC, "other-rekeyed", Operation.WRITE)
    assert internal_prefix(s) == "loyalty-"
    assert transactional_id_prefixes(s) == ("loyalty-task-", "loyalty-worker-")


def test_patterns_are_prefixed_only_for_names_made_from_the_app_id() -> None:
    s = settings()
    prefixed = {
        (b.resource_type, b.resource_name)
        for b in acl_bindings(s)
        if b.pattern is PatternType.PREFIXED
    }
    assert prefixed == {
        (ResourceType.TOPIC, "rewardstream-"),
        (ResourceType.TRANSACTIONAL_ID, "rewardstream-task-"),
        (ResourceType.TRANSACTIONAL_ID, "rewardstream-worker-"),
    }


def test_an_empty_producer_list_grants_nobody_that_topic() -> None:
    s = settings(REWARDSTREAM_ACL_LABEL_PRODUCERS="")
    writers = {
        b.principal
        for b in acl_bindings(s)
        if b.resource_name == s.topic_fraud_labels and b.operation is Operation.WRITE
    }
    assert writers == set()


def test_bindings_are_sorted_and_unique() -> None:
    s = settings(REWARDSTREAM_ACL_EVENT_PRODUCERS="User:shop,User:shop,User:risk-team")
    bindings = acl_bindings(s)
    assert bindings == sorted(set(bindings))


def test_the_worker_principal_is_required_and_named_in_the_error() -> None:
    with pytest.raises(SettingsError, match="REWARDSTREAM_ACL_WORKER_PRINCIPAL"):
        acl_bindings(dataclasses.replace(settings(), acl_worker_principal=""))


def test_principals_split_on_commas_but_keep_a_certificate_name_whole() -> None:
    assert split_principals("") == ()
    assert split_principals(" User:a , User:b,User:a ") == ("User:a", "User:b")
    assert split_principals("User:CN=shop,O=Acme Ltd,C=DE, User:app") == (
        "User:CN=shop,O=Acme Ltd,C=DE",
        "User:app",
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REWARDSTREAM_ACL_EVENT_PRODUCERS", "shop"),
        ("REWARDSTREAM_ACL_LABEL_PRODUCERS", "User:"),
        ("REWARDSTREAM_ACL_MEMBER_PRODUCERS", "crm"),
        ("REWARDSTREAM_ACL_WORKER_PRINCIPAL", "User:a,User:b"),
    ],
)
def test_a_malformed_principal_fails_at_start_up_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        settings(**{variable: value})


def test_topics_create_acls_without_a_worker_principal_touches_no_broker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in [v for v in os.environ if v.startswith("REWARDSTREAM_")]:
        monkeypatch.delenv(variable)
    # Nothing listens there: reaching the broker would fail differently, and slowly.
    assert cli.main(["--bootstrap", "127.0.0.1:1", "topics", "create", "--acls"]) == 1
    error = capsys.readouterr().err
    assert "REWARDSTREAM_ACL_WORKER_PRINCIPAL" in error
