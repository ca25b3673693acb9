"""The trainer's stream handlers: training examples and alerts in, registry records out."""
from __future__ import annotations

import time
from dataclasses import dataclass

from services.trainer.domain import Rejected, decode_example
from services.trainer.metrics import TrainerMetrics
from services.trainer.service import Trainer
from shared.kafka import OutRecord, dead_letter
from shared.serialization import loads, parse_time
from shared.stream import Batch, BatchTable, Output
from shared.topics import Topics

SERVICE = "trainer"


@dataclass
class ExampleStream:
    """training-examples → online learning, the training window, retrain triggers, checkpoints.

    A batch's offsets are committed only once the checkpoint that covers its examples is published
    (Output.hold): after a crash the examples since the last checkpoint come again, and those the
    restored checkpoint already covers are skipped by offset."""

    trainer: Trainer
    topics: Topics
    metrics: TrainerMetrics

    def __call__(self, batch: Batch, tables: dict[str, BatchTable]) -> Output:
        out: list[OutRecord] = []
        trainer = self.trainer
        spec, learned, add_one = trainer.spec, trainer.online.learned, trainer.add_one
        received = taken = skipped = 0
        for tp, messages in batch.items():
            received += len(messages)
            partition = tp.partition
            n = 0
            first = last = -1
            for msg in messages:
                offset = msg.offset
                if learned(partition, offset):  # before decoding: a replay after a restart skips cheaply
                    skipped += 1
                    continue
                try:
                    example = decode_example(spec, msg.value)
                except Rejected as exc:
                    self.metrics.examples.labels(exc.code).inc()
                    out.append(dead_letter(self.topics["events.dlq"], msg, exc, SERVICE, exc.code))
                    continue
                add_one(example)
                if first < 0:
                    first = offset
                last = offset
                n += 1
            if n:
                trainer.added_run(partition, first, last, n)
                taken += n
        if taken:  # one increment per batch, not per example
            self.metrics.learned.inc(taken)
            self.metrics.last_learned.set(time.time())
        if skipped:
            self.metrics.skipped.inc(skipped)
        trainer.check_triggers()
        hold = trainer.segment(received)
        versions, checkpoint = trainer.checkpoint_records()
        out += versions
        if checkpoint is None:
            return Output(out, hold=hold)
        return Output(out, on_acked=lambda: checkpoint.done() or checkpoint.set_result(None), hold=hold)


@dataclass
class AlertStream:
    """alerts → a retrain when a drift or performance alert fires, unless the batch candidates were
    retrained after it (the alerts topic is compacted: a restart reads old alerts again)."""

    trainer: Trainer
    topics: Topics

    def __call__(self, batch: Batch, tables: dict[str, BatchTable]) -> list[OutRecord]:
        out: list[OutRecord] = []
        for tp, messages in batch.items():
            for msg in messages:
                if msg.value is None:  # a compacted-away alert
                    continue
                try:
                    alert = loads(msg.value)
                    when = parse_time(alert["updated_at"]) if isinstance(alert, dict) else None
                except (ValueError, KeyError, TypeError) as exc:
                    out.append(dead_letter(self.topics["events.dlq"], msg, Rejected("invalid", str(exc)), SERVICE,
                                           "invalid"))
                    continue
                if when is not None and not self.trainer.retrained_since(when):
                    self.trainer.alert(alert)
        return out
