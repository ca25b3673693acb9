"""Kafka over SASL_SSL: a broker of its own whose only client listener is SASL_SSL (SCRAM-SHA-512, TLS
with a CA made here), with ACLs on. Ingest and features run as processes, each as its own user with
only its ACLs of the documented layout (deploy/acls.py, docs/architecture.md "ACL layout").

The broker: the client listener is also the inter-broker one (the broker authenticates to itself as
`admin`, the only super user); the controller listener is SASL_PLAINTEXT with PLAIN on loopback, so
that no unauthenticated principal has to be a super user (a PLAINTEXT controller listener would need
User:ANONYMOUS among them for the broker to register).
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from aiokafka.protocol.admin import CreateAclsRequest, DescribeAclsRequest

from deploy import acls as layout
from examples.fraud.generate import GeneratorConfig, generate
from shared.events import Event, TrainingExample
from shared.kafka import make_producer
from shared.offline import open_store
from shared.serialization import dumps
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.data import FRAUD, FRAUD_PATH, txn, wire
from tests.reference import check_snapshots, covers
from tests.support import Broker, ServiceProcess, free_port, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

USERS = ("admin", "ingest", "features", "cli")
# Kafka's protocol codes (org.apache.kafka.common.acl / resource)
RESOURCE, ANY_RESOURCE = {"topic": 2, "group": 3}, 1
PATTERN = {"any": 1, "literal": 3, "prefixed": 4}
OPERATION = {"Any": 1, layout.READ: 3, layout.WRITE: 4, layout.CREATE: 5}
ALLOW, ANY_PERMISSION = 3, 1


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls(d: Path) -> tuple[Path, Path]:
    """A CA and, signed by it, a certificate for 127.0.0.1 and localhost; returns the CA certificate
    and the broker's PEM key store (unencrypted PKCS#8 key, then the certificate)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=loopline-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
            "-subj", "/CN=localhost", cwd=d)
    (d / "broker.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                  "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "broker.crt", "-days", "2", "-extfile", "broker.ext", cwd=d)
    keystore = d / "broker-keystore.pem"
    keystore.write_text((d / "broker.key").read_text() + (d / "broker.crt").read_text())
    return d / "ca.pem", keystore


def broker_config(d: Path, ca: Path, keystore: Path, admin_password: str) -> Path:
    """What kafka.sh appends to its server.properties for a SASL_SSL listener (KAFKA_EXTRA_CONFIG)."""
    controller_password = secrets.token_urlsafe(16)
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    path = d / "sasl-ssl.properties"
    path.write_text("\n".join([
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        f'listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram} required username="admin" '
        f'password="{admin_password}";',
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={keystore}",
        "ssl.truststore.type=PEM",  # the broker is its own inter-broker client
        f"ssl.truststore.location={ca}",
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f'listener.name.controller.plain.sasl.jaas.config={plain} required username="admin" '
        f'password="{controller_password}" user_admin="{controller_password}";',
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=User:admin",
        "",
    ]))
    return path


@dataclass
class SecureKafka:
    """The broker, the CA its certificate is signed by, and each user's password."""

    broker: Broker
    ca: Path
    passwords: dict[str, str] = field(repr=False)

    def settings(self, user: str, password: str | None = None) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.broker.bootstrap, security_protocol="SASL_SSL",
                             sasl_mechanism="SCRAM-SHA-512", sasl_username=user,
                             sasl_password=password or self.passwords[user], ssl_cafile=self.ca)

    def env(self, user: str, password: str | None = None) -> dict[str, str]:
        """A service's KAFKA_* environment for `user`."""
        return {"KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": user,
                "KAFKA_SASL_PASSWORD": password or self.passwords[user], "KAFKA_SSL_CAFILE": str(self.ca)}


@pytest.fixture(scope="module")
def secure() -> Iterator[SecureKafka]:
    """The SASL_SSL broker with a SCRAM-SHA-512 user per name in USERS; stopped, and its data, keys and
    certificates deleted, at teardown, pass or fail."""
    d = Path(tempfile.mkdtemp(prefix="loopline-test-sasl."))
    broker = None
    try:
        ca, keystore = make_tls(d)
        passwords = {user: secrets.token_urlsafe(16) for user in USERS}
        scram = [a for user, pw in passwords.items()
                 for a in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={pw}]")]
        broker = Broker("SASL_SSL", broker_config(d, ca, keystore, passwords["admin"]), scram)
        broker.start()
        yield SecureKafka(broker, ca, passwords)
    finally:
        if broker is not None:
            broker.destroy()
        shutil.rmtree(d, ignore_errors=True)


async def grant(admin_kafka: KafkaSettings, principal: str, entries: list[layout.Acl]) -> None:
    """Create the ACLs (aiokafka has no ACL API: its protocol structs), then wait until the broker's
    authorizer has them, so a client started next is judged by them."""
    admin = AIOKafkaAdminClient(**admin_kafka.client_kwargs())
    await admin.start()
    try:
        for acl in entries:
            request = CreateAclsRequest(RESOURCE[acl.resource], acl.name, PATTERN[acl.pattern], principal,
                                        "*", OPERATION[acl.operation], ALLOW)
            resp = await admin._send_request(request)  # noqa: SLF001
            assert [r[0] for r in resp.creation_responses] == [0], (acl, resp)
        listing = DescribeAclsRequest(ANY_RESOURCE, None, PATTERN["any"], principal, None, OPERATION["Any"],
                                      ANY_PERMISSION)
        for _ in range(100):
            resp = await admin._send_request(listing)  # noqa: SLF001
            assert resp.error_code == 0, resp
            if sum(len(r[3]) for r in resp.resources) >= len(entries):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the broker does not list the ACLs of {principal}")
    finally:
        await admin.close()


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    """Service processes a test starts: stopped at teardown, pass or fail."""
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        proc.stop()


async def test_ingest_and_features_as_their_own_users_with_only_their_acls(secure, processes, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:10]}."
    topics = Topics(prefix)
    admin = secure.settings("admin")
    for user in ("ingest", "features", "cli"):
        await grant(admin, f"User:{user}", layout.acls(user, prefix))
    base = {"LOOPLINE_TOPIC_PREFIX": prefix, "LOOPLINE_SPEC_PATH": str(FRAUD_PATH)}
    port = free_port()
    ingest = ServiceProcess("services.ingest", {**base, **secure.env("ingest"), "INGEST_PORT": str(port)},
                            port=port, log_dir=tmp_path)
    features = ServiceProcess("services.features", {
        **base, **secure.env("features"), "FEATURES_PORT": str(port := free_port()),
        "FEATURES_DATA_DIR": str(tmp_path / "w"), "FEATURES_OFFLINE_URL": str(tmp_path / "offline"),
        "FEATURES_OFFLINE_FLUSH_S": "1"}, port=port, log_dir=tmp_path, ready_timeout=180)
    processes.extend([ingest, features])
    for proc in processes:  # each creates the topics it reads and writes
        proc.start(wait_ready=False)
    for proc in processes:
        proc.wait_ready()

    # over HTTP through ingest, and one event straight to events.raw through ingest's raw bridge
    pairs = list(generate(GeneratorConfig(seed=5, users=40, events=400)))
    r = httpx.post(f"{ingest.url}/v1/events", json=[e for e, _ in pairs], timeout=30)
    assert r.status_code == 202 and r.json()["accepted"] == 400, r.text
    labels = [lb for _, lb in pairs if lb is not None]
    r = httpx.post(f"{ingest.url}/v1/labels", json=labels, timeout=30)
    assert r.status_code == 202 and r.json()["accepted"] == len(labels), r.text
    raw = txn(event_id="raw-1", user_id="raw-user")
    await produce(secure.settings("cli"), topics["events.raw"], [(b"raw-user", dumps(raw))])

    events = [wire(rec.value, Event) for rec in await read_topic(admin, topics["events"], expect=401)]
    assert {e["event_id"] for e in events} == {e["event_id"] for e, _ in pairs} | {"raw-1"}
    snapshots = await read_topic(admin, topics["features"], until=covers(events), timeout_s=120)
    check_snapshots(snapshots, events)  # every value as the pandas recomputation has it
    examples = await read_topic(admin, topics["training-examples"], expect=len(labels), timeout_s=120)
    joined = sorted((x["event_id"], x["label"]) for x in (wire(rec.value, TrainingExample) for rec in examples))
    assert joined == sorted((lb["event_id"], lb["value"]) for lb in labels)
    store = open_store(str(tmp_path / "offline"), FRAUD)  # the offline writer, in a consumer group of its own
    wait_until(lambda: len(store.read("snapshots")) == len(events), 60, "the offline store's snapshots")

    # the ACLs hold: the feature worker's user reads `events` but may not write to it
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(secure.settings("features"), topics["events"], [(b"k", b"v")])


async def test_a_wrong_password_is_refused_with_a_clear_error(secure, processes, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="aiokafka")
    producer = make_producer(secure.settings("ingest", password="wrong"))
    with pytest.raises(KafkaConnectionError):
        try:
            await producer.start()
        finally:
            await producer.stop()
    assert "SaslAuthenticationFailed" in caplog.text and "invalid credentials" in caplog.text

    # a service started with it stays up, is not ready, and says why in its log
    port = free_port()
    env = {**secure.env("ingest", password="wrong"), "INGEST_PORT": str(port),
           "LOOPLINE_SPEC_PATH": str(FRAUD_PATH)}
    ingest = ServiceProcess("services.ingest", env, port=port, log_dir=tmp_path)
    processes.append(ingest)
    ingest.start(wait_ready=False)
    ingest.wait_up()
    wait_until(lambda: "SaslAuthenticationFailed" in ingest.log_path.read_text(), 30, "the reason in the log")
    assert httpx.get(f"{ingest.url}/readyz").status_code == 503
