"""The bare loop, the worker's peer: a plain aiokafka consume -> compute -> produce loop doing the
worker's per-event work, run in a child process (multiprocessing spawn)."""
from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.common import event_loop_runner
from bench.features.data import SPEC_PATH
from bench.features.per_event import MemoryKV, new_store, process
from services.features.domain import entity_key
from shared.features import FeatureEngine
from shared.kafka import (
    OutRecord, make_producer, run_consumer, send_batched, wait_for_leaders,
)
from shared.settings import KafkaSettings
from shared.spec import load_spec
from shared.topics import Topics


def bare_loop_main(bootstrap: str, events_topic: str, out_prefix: str, group: str, total: int) -> None:
    """Child-process entry: consume -> compute -> produce -> await acks -> commit, per batch, until
    `total` events were processed. uvloop, like the faust worker (shared.stream.worker.use_uvloop)."""
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    event_loop_runner()(_bare_loop(KafkaSettings(), events_topic, out_prefix, group, total))


async def _bare_loop(kafka: KafkaSettings, events_topic: str, out_prefix: str, group: str,
                     total: int) -> None:
    store = new_store(FeatureEngine(load_spec(SPEC_PATH)))
    kvs: defaultdict[int, MemoryKV] = defaultdict(MemoryKV)  # per partition, like the worker's table
    topics = Topics(out_prefix)
    features_t, by_event_t = topics["features"], topics["snapshots.by-event"]
    changelog_t = out_prefix + "entity-state"
    await create_topic(kafka, changelog_t, topics.spec_of(topics["events"]).partitions,
                       {"cleanup.policy": "compact"})
    # the worker's producer: acks=all (producer_acks=-1), 256 KiB batches, not idempotent (its linger does
    # not apply: send_batched hands over closed record batches)
    producer = make_producer(kafka, linger_ms=5, enable_idempotence=False)
    await producer.start()
    done = 0
    finished = asyncio.Event()

    async def handle(records: list) -> None:
        nonlocal done
        if not records:
            return
        out: list[OutRecord] = []
        now = time.time()
        store.new_batch()
        for msg in records:
            done += 1
            # the fraud data has no record the worker would dead-letter but late ones: a Rejected
            # here is a bench bug and stops the loop
            record, res = process(store, kvs[msg.partition], msg.partition, msg.value, now)
            if res.status == "late":
                continue
            out.append(OutRecord(features_t, entity_key(record).encode(), res.snapshot))
            out.append(OutRecord(by_event_t, record["event_id"].encode(), res.snapshot))
        for partition, kv in kvs.items():  # the batch's state writes, each key's last (None: a delete)
            out += [OutRecord(changelog_t, key, value, None, partition)
                    for key, value in kv.take_changes().items()]
        # aiokafka's batch API, as the worker uses: one record batch per topic partition
        await asyncio.gather(*await send_batched(producer, out))
        if done >= total:
            finished.set()

    try:  # the loop of the service's plain consumers: commits each batch after its acks
        await run_consumer(kafka, [events_topic], group, handle, stop=finished, name="bare loop")
    finally:
        await producer.stop()


async def create_topic(kafka: KafkaSettings, name: str, partitions: int, configs: dict[str, str]) -> None:
    """A topic outside the catalogue (the bare loop's changelog stand-in)."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, kafka.replication_factor,
                                            topic_configs=configs)])
        await wait_for_leaders(admin, [name], time.monotonic() + 10)
    finally:
        await admin.close()
