"""A stream's tables: faust tables (RocksDB, changelog topics) written in batches."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faust
from faust.types import TP

from shared.kafka import OutRecord

Change = tuple[int, bytes | None]  # (write number, value; None deletes)


class BatchTable:
    """Partition-explicit access to a bytes -> bytes faust table (RocksDB store) for a stream.

    A batch's writes stay in memory (`get` sees them) until the batch's output is acknowledged by
    the broker, then go to the changelog, and once that is acknowledged to the partition's RocksDB
    database (`StreamApp`). So neither the changelog nor the local store is ever ahead of the
    output (a redelivered record finds either no trace of itself or its output already sent), and
    the local store is never ahead of the changelog (recovery replays the changelog over it).
    Records go to the changelog in the order of each key's last write, so a changelog cut short
    by a crash holds a prefix of what handlers wrote, in their order. The changelog topic, its
    format, recovery and standbys are faust's."""

    def __init__(self, table: faust.Table):
        if table.key_type is not bytes or table.value_type is not bytes:
            raise TypeError("BatchTable holds bytes keys and values only")
        self.table = table
        self._writes = 0
        self._unstored: dict[tuple[int, bytes], Change] = {}  # written by batches not yet stored
        self._batch: dict[tuple[int, bytes], Change] = {}  # written by the batch being processed

    @property
    def changelog(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        change = self._unstored.get((partition, key))
        return change[1] if change is not None else self._db(partition).get(key)

    def _write(self, partition: int, key: bytes, value: bytes | None) -> None:
        self._writes += 1
        # A key written again moves to the end: changelog records go out in the order of each key's
        # last write, so a changelog cut short by a crash (a prefix of a partition's records) holds
        # what the handler wrote before, as it wrote it (e.g. an entity's records before its head).
        self._batch.pop((partition, key), None)
        self._unstored[(partition, key)] = self._batch[(partition, key)] = (self._writes, value)

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self._write(partition, key, value)

    def delete(self, partition: int, key: bytes) -> None:
        self._write(partition, key, None)

    def items_from(self, partition: int, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The partition's stored entries in key order, from `start` on (not the unstored writes)."""
        return iter(self._db(partition).items(from_key=start))

    def take_batch(self) -> dict[tuple[int, bytes], Change]:
        batch, self._batch = self._batch, {}
        return batch

    def changelog_records(self, batch: dict[tuple[int, bytes], Change]) -> list[OutRecord]:
        topic = self.changelog
        return [OutRecord(topic, key, change[1], None, partition) for (partition, key), change in batch.items()]

    def store(self, batch: dict[tuple[int, bytes], Change]) -> None:
        """Write a batch's changes to RocksDB (after their changelog records are acknowledged)."""
        unstored = self._unstored
        for (partition, key), change in batch.items():
            db, value = self._db(partition), change[1]
            if value is None:
                del db[key]
            else:
                db[key] = value
            if unstored.get((partition, key)) is change:  # not written again by a later batch
                del unstored[(partition, key)]

    def persisted(self, tp: TP, offset: int) -> None:
        self.table.data.set_persisted_offset(tp, offset)

    def view(self, partition: int) -> TableView:
        return TableView(self, partition)


class TableView:
    """One partition of a BatchTable as a plain key-value store (what domain code works on)."""

    __slots__ = ("_table", "_p")

    def __init__(self, table: BatchTable, partition: int):
        self._table, self._p = table, partition

    def get(self, key: bytes) -> bytes | None:
        return self._table.get(self._p, key)

    def set(self, key: bytes, value: bytes) -> None:
        self._table.set(self._p, key, value)

    def delete(self, key: bytes) -> None:
        self._table.delete(self._p, key)

    def items_from(self, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self._table.items_from(self._p, start)
