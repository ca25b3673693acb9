"""The Kafka ACLs each Loopline component needs (docs/architecture.md, "ACL layout"), as data.

`python -m deploy.acls ingest --principal User:ingest --prefix acme.` prints them as kafka-acls.sh
commands; tests/integration/test_kafka_sasl.py runs ingest and features with nothing more.

Names are catalogue topics (shared/topics.py) or, for what a component names at run time (a stream
app's consumer group and changelogs carry its spec name or feature hash), name prefixes; both get the
deployment's topic prefix in front. READ and WRITE include DESCRIBE. An idempotent producer needs no
IDEMPOTENT_WRITE on the cluster: WRITE on a topic is enough (Kafka 2.8+, KIP-679).
"""
from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterable
from typing import NamedTuple

from shared.topics import Topics

READ, WRITE, CREATE = "Read", "Write", "Create"


class Grant(NamedTuple):
    """`operations` on each of `names`: topics (catalogue names) or consumer groups; `prefixed`: the
    names are prefixes (a PREFIXED resource pattern), not whole names."""

    resource: str  # "topic" | "group"
    names: tuple[str, ...]
    operations: tuple[str, ...]
    prefixed: bool = False


def topics(*names: str, ops: tuple[str, ...]) -> Grant:
    return Grant("topic", names, ops)


def prefixed(resource: str, name: str, ops: tuple[str, ...]) -> Grant:
    return Grant(resource, (name,), ops, prefixed=True)


# Each service creates the missing catalogue topics it reads or writes at start (and its changelogs):
# hence CREATE on them. Topics created beforehand by an administrator need no CREATE.
LAYOUT: dict[str, tuple[Grant, ...]] = {
    "ingest": (
        topics("events.raw", "labels.raw", ops=(READ, CREATE)),  # the raw bridge
        topics("events", "labels", "events.dlq", ops=(WRITE, CREATE)),
        Grant("group", ("loopline.ingest.raw",), (READ,)),  # the raw bridge
    ),
    "features": (
        topics("events", "labels", ops=(READ, CREATE)),
        # snapshots.by-event: written by the feature stream, read by the label join; features and
        # training-examples are read back by the offline writer
        topics("snapshots.by-event", "features", "training-examples", ops=(READ, WRITE, CREATE)),
        topics("events.dlq", ops=(WRITE, CREATE)),
        # loopline.features.defs-<feature hash>.{entity-state,label-join}.changelog
        prefixed("topic", "loopline.features.", (READ, WRITE, CREATE)),
        # loopline.features.defs-<feature hash> (the streams), loopline.features.offline
        prefixed("group", "loopline.features.", (READ,)),
    ),
    "trainer": (
        topics("training-examples", "alerts", ops=(READ, CREATE)),
        topics("models", ops=(READ, WRITE, CREATE)),
        topics("events.dlq", ops=(WRITE, CREATE)),
        prefixed("group", "loopline.trainer.", (READ,)),  # loopline.trainer.spec-<spec name>
    ),
    "serving": (
        topics("models", ops=(READ, CREATE)),
        topics("predictions", "events", ops=(WRITE, CREATE)),  # events: forwarded scored events
        # the feature state replica reads features' loopline.features.defs-<hash>.entity-state.changelog
        prefixed("topic", "loopline.features.defs-", (READ, CREATE)),
    ),
    "monitor": (
        topics("predictions", "training-examples", "features", "models", ops=(READ, CREATE)),
        topics("alerts", "subscriptions", ops=(READ, WRITE, CREATE)),
        topics("events.dlq", "alerts.deliveries.dlq", ops=(WRITE, CREATE)),
        # loopline.monitor.spec-<spec name>.join.changelog
        prefixed("topic", "loopline.monitor.", (READ, WRITE, CREATE)),
        # loopline.monitor.spec-<spec name> (the stream), loopline.monitor.deliveries (webhooks)
        prefixed("group", "loopline.monitor.", (READ,)),
    ),
    # `loopline replay --via kafka` and `loopline explore`; `replay --topic T` needs READ on T as well
    "cli": (
        topics("events.raw", "labels.raw", ops=(WRITE,)),
        topics("models", ops=(READ,)),
    ),
    # `python -m services.ingest.replay` (validates itself, writes past ingest); `--topic T`: READ on T too
    "ingest-replay": (
        topics("events", "labels", ops=(WRITE,)),
    ),
}


class Acl(NamedTuple):
    resource: str  # "topic" | "group"
    name: str
    pattern: str  # "literal" | "prefixed"
    operation: str


def resolve(grant: Grant, prefix: str) -> list[str]:
    """The grant's real names under a deployment prefix (catalogue topics checked by Topics)."""
    t = Topics(prefix)
    if grant.prefixed or grant.resource == "group":
        return [t.prefix + name for name in grant.names]
    return [t[name] for name in grant.names]


def acls(component: str, prefix: str = "") -> list[Acl]:
    """Every ACL (one operation on one resource) the component needs under a deployment prefix."""
    return [Acl(g.resource, name, "prefixed" if g.prefixed else "literal", op)
            for g in LAYOUT[component] for name in resolve(g, prefix) for op in g.operations]


def kafka_acls_commands(component: str, principal: str, prefix: str = "", bootstrap: str = "BROKER:9093",
                        command_config: str = "admin.properties") -> list[str]:
    """The component's ACLs as kafka-acls.sh commands (one per grant: each operation on each name)."""
    out = []
    for g in LAYOUT[component]:
        args = ["kafka-acls.sh", "--bootstrap-server", bootstrap, "--command-config", command_config,
                "--add", "--allow-principal", principal]
        args += [a for op in g.operations for a in ("--operation", op)]
        args += [a for name in resolve(g, prefix) for a in (f"--{g.resource}", name)]
        if g.prefixed:
            args += ["--resource-pattern-type", "prefixed"]
        out.append(shlex.join(args))
    return out


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.acls", description=__doc__.splitlines()[0])
    parser.add_argument("components", nargs="*", metavar="COMPONENT",
                        help=f"{', '.join(LAYOUT)}; default: all")
    parser.add_argument("--principal", default="User:{component}",
                        help="principal of each component ({component} is replaced); default %(default)s")
    parser.add_argument("--prefix", default="", help="the deployment's LOOPLINE_TOPIC_PREFIX")
    parser.add_argument("--bootstrap-server", default="BROKER:9093")
    parser.add_argument("--command-config", default="admin.properties",
                        help="kafka-acls.sh's client properties (an administrator's credentials)")
    args = parser.parse_args(None if argv is None else list(argv))
    unknown = set(args.components) - set(LAYOUT)
    if unknown:
        parser.error(f"unknown component(s) {', '.join(sorted(unknown))}; choose from {', '.join(LAYOUT)}")
    for component in args.components or LAYOUT:
        print(f"# {component}")
        for line in kafka_acls_commands(component, args.principal.format(component=component), args.prefix,
                                        args.bootstrap_server, args.command_config):
            print(line)


if __name__ == "__main__":
    main()
