"""The label join's expiry index lives in the join table (RocksDB, byte-ordered keys)."""
from __future__ import annotations

from services.features.domain import EXPIRY, decode_expiry, expiry_key


def test_index_keys_sort_by_time_then_key_and_round_trip():
    times = [1.5, 1_772_355_600.0, 1_772_355_600.25, 1_772_960_400.0, 86_400.0]
    keys = [expiry_key(t, f"evt-{i}".encode()) for i, t in enumerate(times)]
    assert [decode_expiry(k) for k in sorted(keys)] == sorted(
        (t, f"evt-{i}".encode()) for i, t in enumerate(times))
    assert sorted([expiry_key(5.0, b"b"), expiry_key(5.0, b"a")]) == [expiry_key(5.0, b"a"), expiry_key(5.0, b"b")]


def test_index_keys_sort_after_every_event_id():
    # event ids are UTF-8 text: no byte is 0xfe, so an index scan from EXPIRY never meets an entry
    for eid in ["zzzz", "\uffff" * 3, "ünïcode-𝔁", "__faust\0offset__"]:
        assert eid.encode() < EXPIRY <= expiry_key(0.0, b"")
