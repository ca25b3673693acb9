"""The online feature engine: one implementation for the feature service AND serving.

`FeatureEngine` is pure (no I/O): it computes an entity's point-in-time features from an in-memory
`EntityState` and updates that state. `FeatureStore` keeps the states of many entities in a
key-value store (a RocksDB table partition in the feature worker, a replica in serving, a dict in
tests), bounded in memory by an LRU of decoded states, and handles duplicates. Training examples
are built from the snapshots the feature service emits, so training and serving compute features
with the same code.

Semantics (this is the definition; tests/unit/test_features_engine.py checks it against pandas)
-----------------------------------------------------------------------------------------------
* Events belong to an entity: the value of ``spec.entity.key`` (``entity_of``), or one global
  entity (key None) when the spec has no entity. Each event has an ``event_id``, an event time
  ``t`` (the spec's ``time_field`` as float UTC epoch seconds, ``event_time``) and fields.
* For an event e of entity E, its history H is the events of E processed before it (arrival
  order), excluding rejected (late) events and duplicates. The arrival index of an accepted event
  is a per-entity sequence number.
* The snapshot of e uses only H, never e itself nor later arrivals:
    - sliding window W: S = {x in H : t - W < x.t <= t}
    - tumbling window W (epoch-aligned): S = {x in H : floor(x.t / W) == floor(t / W), x.t <= t}
    - over S: ``count`` = |S| (events, whatever their fields); for a field f, aggregates ignore
      the x whose f is missing: ``sum`` (0.0 if none), ``mean`` (None if none), ``std`` (sample,
      ddof=1; None if fewer than 2), ``min``/``max`` (None if none), ``distinct`` (number of
      distinct non-missing values; 0 if none), ``ratio_to_mean`` = e.f / mean(S.f) (None if the
      mean is None or 0, or e.f is missing). A bool field counts as 0/1 in ``sum`` and ``mean``
      (the number and the share of true).
    - ``last``: the f of the x in H with x.t <= t that has the greatest (x.t, arrival index)
      (None if there is no such x, or if that x has no f).
    - ``time_since_last``: t - max(x.t for x in H with x.t <= t), seconds; None if no such x.
  Arithmetic: ``sum`` is the exact sum rounded once (as ``math.fsum``); ``mean`` = sum / n;
  ``std`` is the square root of the exact sample variance rounded once. So results do not depend
  on the order in which events were added or evicted, nor on how the engine evaluated the window.
  Types: count/distinct are Python ints; sum/mean/std/min/max/ratio are Python floats (also for
  int fields); ``last`` is a float for float/timestamp fields (timestamps as epoch seconds), an
  int for int fields, 0/1 for bool fields and the index into the spec's ``values`` for category
  fields (``last`` of a string field is refused at construction: it is not a number). A result
  that would be NaN or +-inf (or beyond the float range) is None.
* Lateness: maxT = the largest event time of E's accepted events. An event with
  t < maxT - allowed_lateness is LATE: rejected, state unchanged, status "late", no features.
* Retention: R = largest window (tumbling windows count as their size) + allowed_lateness. Only
  the events with x.t >= maxT - R are kept, plus the newest (greatest (t, arrival)) event older
  than that, so ``last``/``time_since_last`` stay exact after eviction. Since every accepted event
  has t >= maxT - allowed_lateness, the snapshot of every accepted event is exact.
* Duplicates (`FeatureStore`): an event whose event_id equals that of a kept event with
  x.t >= maxT - R is a DUPLICATE (checked before lateness; the id alone decides, whatever the
  payload): state unchanged, status "duplicate", and the record emitted for the original (its
  snapshot, with the original's time and fields) is returned again, byte for byte. A redelivery
  of an evicted event is late (its t < maxT - R <= maxT - allowed_lateness).
* Serving: ``snapshot(state, t, fields)`` = the features an event at t with these fields would get
  now, without changing the state (exact for t >= maxT - allowed_lateness; for an older t, which
  would be rejected as late, it is computed from the kept events).

Cost and storage (the "tiles")
------------------------------
In memory an entity's kept events are columns sorted by (t, arrival): float64 times, arrival
numbers and one column per event field that some feature uses (float64 for int/float/timestamp
fields and for bool fields aggregated numerically, NaN = missing; int8/int16 category codes;
bool 0/1 with -1 = missing; 8-byte blake2b digests for string fields, 0 = missing). A window is an
index range found by bisection. Small ranges are aggregated directly. Once a window group holds
more than `HOT` events, the state keeps *running aggregates* for it (exact integer sums, a sorted
multiset for min/max, value counts for distinct) that each event updates once on entering and
once on leaving; a query then corrects them only by the events between the running window and
the event's own window (none for an event at or after maxT; for an out-of-order event, those
within its lateness). Per-event cost is therefore independent of how many events a window holds.

Persisted, an entity is several small records (see `FeatureStore`): a head (maxT, counters, the
`last` anchor and the newest < CHUNK events in arrival order), sealed chunks of CHUNK events in
arrival order (written once, deleted when all their events have left the retention), and one
"seen" record per kept event (its time and the record emitted for it, for duplicates). No record
grows with the number of events in a window.
"""
from __future__ import annotations

import hashlib
import math
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

from sortedcontainers import SortedList

from shared.errors import SpecError
from shared.serialization import parse_time, to_utc
from shared.spec import WINDOWED, PipelineSpec

__all__ = ["Applied", "EntityState", "FeatureEngine", "FeatureStore", "KV", "Processed", "StateFormatError",
           "event_id_hash", "state_key"]

CHUNK = 32  # events per sealed chunk record
HOT = 48  # events in a window group's range from which running aggregates are kept

_NAN = float("nan")
_NEG_INF = float("-inf")
_isfinite = math.isfinite
_floor = math.floor
_fsum = math.fsum
_LITTLE = sys.byteorder == "little"
# Every finite float64 is an integer multiple of 2**-1074: sums scaled by 2**1074 are exact integers.
_E = 1074
_SCALE = 1 << _E
_SCALE2 = 1 << (2 * _E)

Features = dict[str, float | int | None]
Row = list  # one event's stored column values


class Applied(NamedTuple):
    """What `FeatureEngine.apply` did with one event."""

    status: Literal["new", "late"]  # "new" (state updated) or "late" (state unchanged)
    features: Features | None  # the point-in-time snapshot; None when late


class StateFormatError(ValueError):
    """Stored entity state is corrupt or was written for different feature definitions."""


def event_id_hash(event_id: str) -> int:
    """First 8 bytes of blake2b(event_id), as an unsigned int (the dedup key kept in state)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def _digest(value: Any) -> int:
    h = int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "little")
    return h or 1  # 0 marks a missing value


def _scaled(v: float) -> int:
    """v * 2**1074, exactly."""
    n, d = v.as_integer_ratio()
    return n << (_E + 1 - d.bit_length())


def _scaled_sq(v: float) -> int:
    """v**2 * 2**2148, exactly."""
    n, d = v.as_integer_ratio()
    return (n * n) << (2 * (_E + 1 - d.bit_length()))


def _ratio(num: int, den: int) -> float | None:
    """num / den correctly rounded, None beyond the float range."""
    try:
        return num / den
    except OverflowError:
        return None


def _total(vals: Any) -> float | None:
    """The exact sum of floats rounded once; None beyond the float range."""
    try:
        return _fsum(vals)
    except OverflowError:  # an intermediate overflow: the exact sum may still be a float
        return _ratio(sum(map(_scaled, vals)), _SCALE)


def _std(m: int, s1: int, s2: int) -> float | None:
    """Sample std from exact scaled sums (s1 = sum * 2**E, s2 = sum of squares * 2**2E)."""
    var = _ratio(m * s2 - s1 * s1, (m * (m - 1)) << (2 * _E))
    if var is None:
        return None
    std = math.sqrt(var)
    return std if _isfinite(std) else None


# ---------------------------------------------------------------------------- evaluation plan

class _Num(NamedTuple):
    """A numeric column aggregated in a window group, and the output slots of each aggregate."""

    ci: int
    optional: bool  # may hold NaN (missing)
    sums: tuple[int, ...]
    means: tuple[int, ...]
    stds: tuple[int, ...]
    mins: tuple[int, ...]
    maxs: tuple[int, ...]
    ratios: tuple[int, ...]


class _Dist(NamedTuple):
    ci: int
    is_double: bool
    missing: float | int
    slots: tuple[int, ...]


class _Group(NamedTuple):
    """All features over one window (kind, width)."""

    sliding: bool
    width: float
    counts: tuple[int, ...]
    nums: tuple[_Num, ...]
    dists: tuple[_Dist, ...]

    def bucket(self, t: float) -> int:
        return _floor(t / self.width)


class _Running:
    """Running aggregates of one window group over a set of kept events (see module docstring)."""

    __slots__ = ("nums", "sorted", "dists")

    def __init__(self, group: _Group):
        self.nums = [[0, 0, 0] for _ in group.nums]  # per numeric column: count, exact sum, exact sum of squares
        self.sorted = [SortedList() if (n.mins or n.maxs) else None for n in group.nums]
        self.dists: list[dict] = [{} for _ in group.dists]

    def add(self, group: _Group, cols: list[array], x: int, sign: int) -> None:
        """Add (sign 1) or remove (sign -1) kept event x."""
        for k, num in enumerate(group.nums):
            v = cols[num.ci][x]
            if v != v:
                continue
            acc = self.nums[k]
            acc[0] += sign
            if num.sums or num.means or num.ratios or num.stds:
                acc[1] += _scaled(v) if sign > 0 else -_scaled(v)
            if num.stds:
                acc[2] += _scaled_sq(v) if sign > 0 else -_scaled_sq(v)
            sl = self.sorted[k]
            if sl is not None:
                sl.add(v) if sign > 0 else sl.remove(v)
        for k, dist in enumerate(group.dists):
            v = cols[dist.ci][x]
            if v == dist.missing or v != v:
                continue
            counts = self.dists[k]
            c = counts.get(v, 0) + sign
            if c:
                counts[v] = c
            else:
                del counts[v]


def _extreme(sl: SortedList, removed: list, reverse: bool) -> float | None:
    """Smallest (or largest) value of the multiset `sl` minus the values in `removed`."""
    if not removed:
        return (sl[-1] if reverse else sl[0]) if sl else None
    pending: dict = {}
    for v in removed:
        pending[v] = pending.get(v, 0) + 1
    for v in (reversed(sl) if reverse else sl):
        c = pending.get(v)
        if c:
            pending[v] = c - 1
        else:
            return v
    return None


# ---------------------------------------------------------------------------- state

class EntityState:
    """One entity's kept events (columns sorted by (event time, arrival)), the derived running
    aggregates, and what `FeatureStore` needs to persist it incrementally."""

    __slots__ = ("times", "seqs", "cols", "start", "next_seq", "max_t", "open", "chunks", "first_chunk",
                 "dropped_upto", "drop_epoch", "runs", "run_from", "sealed")

    def __init__(self, typecodes: str, ngroups: int) -> None:
        self.times = array("d")
        self.seqs = array("q")  # arrival numbers
        self.cols = [array(tc) for tc in typecodes]
        self.start = 0  # events before this index are evicted (compacted lazily)
        self.next_seq = 0  # arrival number of the next accepted event
        self.max_t = _NEG_INF
        # The open chunk: the accepted events since the last sealed chunk, in arrival order
        # (times, event id hashes, rows).
        self.open: tuple[array, array, list[array]] = (array("d"), array("Q"), [array(tc) for tc in typecodes])
        self.chunks: deque[tuple[int, float]] = deque()  # live sealed chunks: (number, max event time)
        self.first_chunk = 0  # number of the oldest live sealed chunk
        # Chunks [dropped_upto, first_chunk) have left the retention but their records are not deleted
        # yet: that happens in a later batch than the head that stopped naming them (FeatureStore).
        self.dropped_upto = 0
        self.drop_epoch = -1  # FeatureStore.epoch when first_chunk last moved
        # Per window group: None (evaluated directly) or running aggregates: one _Running for a sliding
        # window (over the kept events with t > run_from[g]) or {bucket: _Running} for a tumbling one.
        self.runs: list[Any] = [None] * ngroups
        self.run_from = [_NEG_INF] * ngroups
        self.sealed: list[tuple[int, bytes]] = []  # chunks sealed since the last persist

    def __len__(self) -> int:
        return len(self.times) - self.start

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EntityState) and self._key() == other._key()

    def _key(self) -> tuple:
        s = self.start
        return (self.times[s:], self.seqs[s:], [c[s:] for c in self.cols], self.next_seq, self.max_t,
                self.first_chunk, self.open)

    def __repr__(self) -> str:
        return f"EntityState(events={len(self)}, next_seq={self.next_seq}, max_t={self.max_t})"

    def arrivals(self) -> list[int]:
        """Arrival number of each kept event (in time order)."""
        return list(self.seqs[self.start:])


# Records. Head: magic, version, flags (bit0: has an anchor), layout, next arrival number, maxT,
# first live chunk, first chunk not yet deleted, open-chunk size; then the anchor (t, arrival, row)
# and the open chunk's columns (times, id hashes, rows). Chunk: magic, version, layout, number,
# size; then its columns.
_HEAD = struct.Struct("<2sBBIQdQQI")
_CHUNK = struct.Struct("<2sBxIQI")
_VERSION = 2


def _put(parts: list, arr: array) -> None:
    if not _LITTLE and arr.itemsize > 1:
        arr = array(arr.typecode, arr)
        arr.byteswap()
    parts.append(arr.tobytes())


def _take(view: memoryview, pos: int, typecode: str, n: int) -> tuple[array, int]:
    arr = array(typecode)
    end = pos + n * arr.itemsize
    if end > len(view):
        raise StateFormatError("entity state is truncated")
    arr.frombytes(view[pos:end])
    if not _LITTLE and arr.itemsize > 1:
        arr.byteswap()
    return arr, end


# ---------------------------------------------------------------------------- engine

class _Column(NamedTuple):
    field: str
    ftype: str  # the spec field type
    typecode: str
    optional: bool


class FeatureEngine:
    """Computes the spec's online features per entity; see the module docstring for the semantics."""

    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        defs = spec.features.definitions
        self.feature_names: list[str] = [d.name for d in defs]
        self.feature_hash: str = spec.feature_hash()
        self.time_field = spec.event.time_field
        self.entity_key = spec.entity.key if spec.entity else None
        self.allowed_lateness = spec.features.allowed_lateness.total_seconds()
        windows = [d.window.total_seconds() for d in defs if d.agg in WINDOWED]
        self.max_window = max(windows, default=0.0)
        self.retention = self.max_window + self.allowed_lateness
        fields = spec.event.fields
        numeric_use = {d.field for d in defs if d.agg in ("sum", "mean", "std", "min", "max", "ratio_to_mean")}

        # One column per event field used by some feature, in order of first use.
        columns: dict[str, _Column] = {}
        for d in defs:
            if d.field is None or d.field in columns:
                continue
            fs = fields[d.field]
            if fs.type in ("int", "float", "timestamp") or (fs.type == "bool" and d.field in numeric_use):
                tc = "d"
            elif fs.type == "category":
                k = len(fs.values or ())
                tc = "b" if k <= 127 else "h" if k <= 32767 else "i"
            elif fs.type == "bool":
                tc = "b"
            else:
                tc = "Q"
            columns[d.field] = _Column(d.field, fs.type, tc, not fs.required)
        for d in defs:
            if d.agg == "last" and columns[d.field].ftype == "string":
                raise SpecError(f"feature '{d.name}': 'last' of string field '{d.field}' is not a number")
        self._columns = list(columns.values())
        col_index = {c.field: i for i, c in enumerate(self._columns)}
        self._typecodes = "".join(c.typecode for c in self._columns)
        layout_text = repr([(c.field, c.ftype, c.typecode, fields[c.field].values) for c in self._columns])
        self._layout = int.from_bytes(hashlib.blake2b(layout_text.encode(), digest_size=4).digest(), "little")
        self._codes = {c.field: {v: i for i, v in enumerate(fields[c.field].values or ())}
                       for c in self._columns if c.ftype == "category"}

        # Evaluation plan: windowed features grouped by window, then by field.
        self._nf = len(defs)
        plan: dict[tuple[str, float], dict] = {}
        self._last: list[tuple[int, int, type, bool]] = []
        self._since: list[int] = []
        for i, d in enumerate(defs):
            if d.agg == "last":
                col = self._columns[col_index[d.field]]
                conv = float if col.ftype in ("float", "timestamp") else int
                self._last.append((i, col_index[d.field], conv, col.typecode == "d"))
                continue
            if d.agg == "time_since_last":
                self._since.append(i)
                continue
            g = plan.setdefault((d.kind, d.window.total_seconds()), {"count": [], "num": {}, "dist": {}})
            if d.agg == "count":
                g["count"].append(i)
            elif d.agg == "distinct":
                g["dist"].setdefault(col_index[d.field], []).append(i)
            else:
                g["num"].setdefault(col_index[d.field], {}).setdefault(d.agg, []).append(i)
        groups = []
        for (kind, w), g in plan.items():
            nums = tuple(_Num(ci, self._columns[ci].optional, *(tuple(slots.get(a, ())) for a in (
                "sum", "mean", "std", "min", "max", "ratio_to_mean"))) for ci, slots in g["num"].items())
            dists = []
            for ci, slots in g["dist"].items():
                tc = self._columns[ci].typecode
                dists.append(_Dist(ci, tc == "d", _NAN if tc == "d" else 0 if tc == "Q" else -1, tuple(slots)))
            groups.append(_Group(kind == "sliding", w, tuple(g["count"]), nums, tuple(dists)))
        self._groups = tuple(groups)

    # ------------------------------------------------------------------ helpers

    def event_time(self, fields: dict[str, Any]) -> float:
        """The event's time (the spec's time_field) as float UTC epoch seconds."""
        return self._time(fields[self.time_field])

    def entity_of(self, fields: dict[str, Any]) -> str | None:
        """The entity key value (as str) an event belongs to; None when the spec has no entity."""
        if self.entity_key is None:
            return None
        return str(fields[self.entity_key])

    @staticmethod
    def _time(value: Any) -> float:
        if isinstance(value, str):
            return parse_time(value).timestamp()
        if isinstance(value, datetime):
            return to_utc(value).timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"not a timestamp: {value!r}")

    def new_state(self) -> EntityState:
        return EntityState(self._typecodes, len(self._groups))

    def is_late(self, state: EntityState, t: float) -> bool:
        """Whether an event at t would be rejected as late."""
        return t < state.max_t - self.allowed_lateness

    def row(self, fields: dict[str, Any]) -> Row:
        """The stored value of each column for one event's fields (ValueError if one cannot be stored)."""
        row = []
        for c in self._columns:
            v = fields.get(c.field)
            tc = c.typecode
            if tc == "d":
                row.append(_NAN if v is None else self._time(v) if c.ftype == "timestamp" else float(v))
            elif tc == "Q":
                row.append(0 if v is None else _digest(v))
            elif c.ftype == "bool":
                row.append(-1 if v is None else int(bool(v)))
            elif v is None:
                row.append(-1)
            else:
                code = self._codes[c.field].get(v)
                if code is None:
                    raise ValueError(f"{c.field}: {v!r} is not one of the spec's values")
                row.append(code)
        return row

    # ------------------------------------------------------------------ the engine

    def apply(self, state: EntityState, event_id: str, t: float, fields: dict[str, Any]) -> Applied:
        """Process one new event of this entity: its snapshot (from earlier events only), then the
        state update. Duplicates are `FeatureStore`'s business: the engine sees new events only."""
        if not _isfinite(t):
            raise ValueError(f"event time must be finite, got {t!r}")
        if self.is_late(state, t):
            return Applied("late", None)
        row = self.row(fields)
        features = self.query(state, t, row)
        self.insert(state, event_id_hash(event_id), t, row)
        return Applied("new", features)

    def snapshot(self, state: EntityState, t: float, fields: dict[str, Any]) -> Features:
        """Request-time features for serving: what an event at t with these fields would get now,
        without changing the state."""
        if not _isfinite(t):
            raise ValueError(f"event time must be finite, got {t!r}")
        return self.query(state, t, self.row(fields))

    def query(self, state: EntityState, t: float, row: Row) -> Features:
        """The snapshot of an event at t with this row. Changes no kept event (it may start the
        running aggregates of a window group, which never changes a result)."""
        times, start, cols = state.times, state.start, state.cols
        out: list = [None] * self._nf
        end = bisect_right(times, t, start)
        for gi, g in enumerate(self._groups):
            if g.sliding:
                i = bisect_right(times, t - g.width, start, end)
            else:
                q = g.bucket(t)
                i = bisect_left(times, q, start, end, key=g.bucket)
            for slot in g.counts:
                out[slot] = end - i
            if not g.nums and not g.dists:
                continue
            run, adds, subs = self._running_for(state, gi, g, t, i, end)
            if run is None:
                self._direct(g, cols, i, end, row, out)
            else:
                self._corrected(g, cols, run, adds, subs, row, out)
        if end > start:
            j = end - 1
            for slot, ci, conv, is_double in self._last:
                v = cols[ci][j]
                if (v == v) if is_double else (v != -1):
                    out[slot] = conv(v)
            if self._since:
                gap = t - times[j]
                for slot in self._since:
                    out[slot] = gap
        return dict(zip(self.feature_names, out))

    def _running_for(self, state: EntityState, gi: int, g: _Group, t: float, i: int, j: int
                     ) -> tuple[_Running | None, list[tuple[int, int]], list[tuple[int, int]]]:
        """Running aggregates and the index ranges to add and remove to get [i, j), when that is
        cheaper than aggregating [i, j) directly; else (None, [], [])."""
        times, start, n = state.times, state.start, len(state.times)
        direct = j - i
        if g.sliding:
            run = state.runs[gi]
            if run is None:
                if direct <= HOT:
                    return None, [], []
                run = self._start_sliding(state, gi, g)
            a = bisect_right(times, state.run_from[gi], start)  # running: kept events [a, n)
            if j <= a:
                return None, [], []
            adds, subs = [(i, a)] if i < a else [], [(a, i)] if i > a else []
            if j < n:
                subs.append((j, n))
        else:
            q = g.bucket(t)
            buckets = state.runs[gi]
            run = buckets.get(q) if buckets is not None else None
            hi = bisect_left(times, q + 1, j, n, key=g.bucket)  # bucket q: kept events [i, hi)
            if run is None:
                if direct <= HOT or q < g.bucket(max(t, state.max_t) - self.allowed_lateness):
                    return None, [], []  # small, or a bucket no accepted event can reach any more
                run = _Running(g)
                for x in range(i, hi):
                    run.add(g, state.cols, x, 1)
                if buckets is None:
                    buckets = state.runs[gi] = {}
                buckets[q] = run
            adds, subs = [], [(j, hi)] if j < hi else []
        cost = sum(b - a_ for a_, b in adds) + sum(b - a_ for a_, b in subs)
        return (run, adds, subs) if cost < direct else (None, [], [])

    def _start_sliding(self, state: EntityState, gi: int, g: _Group) -> _Running:
        run = state.runs[gi] = _Running(g)
        state.run_from[gi] = frm = state.max_t - g.width
        for x in range(bisect_right(state.times, frm, state.start), len(state.times)):
            run.add(g, state.cols, x, 1)
        return run

    @staticmethod
    def _direct(g: _Group, cols: list[array], i: int, j: int, row: Row, out: list) -> None:
        for num in g.nums:
            vals = cols[num.ci][i:j]
            if num.optional:
                vals = [v for v in vals if v == v]
            m = len(vals)
            if not m:
                for slot in num.sums:
                    out[slot] = 0.0
                continue
            for slot in num.mins:
                out[slot] = min(vals)
            for slot in num.maxs:
                out[slot] = max(vals)
            std = None
            if num.stds and m > 1:
                std = _std(m, sum(map(_scaled, vals)), sum(map(_scaled_sq, vals)))
            FeatureEngine._finish(num, m, _total(vals), std, row, out)
        for dist in g.dists:
            vals = cols[dist.ci][i:j]
            if dist.is_double:
                n = len({v for v in vals if v == v})
            else:
                seen = set(vals)
                seen.discard(dist.missing)
                n = len(seen)
            for slot in dist.slots:
                out[slot] = n

    @staticmethod
    def _corrected(g: _Group, cols: list[array], run: _Running, adds: list, subs: list, row: Row,
                   out: list) -> None:
        for k, num in enumerate(g.nums):
            col = cols[num.ci]
            plus = [v for a, b in adds for v in col[a:b] if v == v]
            minus = [v for a, b in subs for v in col[a:b] if v == v]
            m0, s1, s2 = run.nums[k]
            m = m0 + len(plus) - len(minus)
            if not m:
                for slot in num.sums:
                    out[slot] = 0.0
                continue
            sl = run.sorted[k]
            if sl is not None:
                if num.mins:
                    lo = _extreme(sl, minus, False)
                    lo = min(plus) if lo is None else min(lo, *plus) if plus else lo
                    for slot in num.mins:
                        out[slot] = lo
                if num.maxs:
                    hi = _extreme(sl, minus, True)
                    hi = max(plus) if hi is None else max(hi, *plus) if plus else hi
                    for slot in num.maxs:
                        out[slot] = hi
            if num.sums or num.means or num.ratios or num.stds:
                s1 += sum(map(_scaled, plus)) - sum(map(_scaled, minus))
                std = None
                if num.stds and m > 1:
                    s2 += sum(map(_scaled_sq, plus)) - sum(map(_scaled_sq, minus))
                    std = _std(m, s1, s2)
                FeatureEngine._finish(num, m, _ratio(s1, _SCALE), std, row, out)
        for k, dist in enumerate(g.dists):
            counts = run.dists[k]
            col, missing = cols[dist.ci], dist.missing
            delta: dict = {}
            for ranges, sign in ((adds, 1), (subs, -1)):
                for a, b in ranges:
                    for v in col[a:b]:
                        if v != missing and v == v:
                            delta[v] = delta.get(v, 0) + sign
            n = len(counts)
            for v, dv in delta.items():
                c = counts.get(v, 0)
                if c == 0 and dv > 0:
                    n += 1
                elif c > 0 and c + dv <= 0:
                    n -= 1
            for slot in dist.slots:
                out[slot] = n

    @staticmethod
    def _finish(num: _Num, m: int, total: float | None, std: float | None, row: Row, out: list) -> None:
        """sum, mean, std and ratio_to_mean from the count, the rounded exact sum and the std."""
        for slot in num.stds:
            out[slot] = std
        if total is None or not _isfinite(total):
            return
        for slot in num.sums:
            out[slot] = total
        mean = total / m
        for slot in num.means:
            out[slot] = mean
        if num.ratios and mean != 0.0:
            v = row[num.ci]
            if v == v:
                r = v / mean
                if _isfinite(r):
                    for slot in num.ratios:
                        out[slot] = r

    def insert(self, state: EntityState, id_hash: int, t: float, row: Row) -> None:
        """Add a new (not late, not duplicate) event to the state; evict what left the retention."""
        times = state.times
        if t > state.max_t:
            self._advance(state, t)
        pos = bisect_right(times, t, state.start)
        seq = state.next_seq
        state.next_seq += 1
        if pos == len(times):
            times.append(t)
            state.seqs.append(seq)
            for col, v in zip(state.cols, row):
                col.append(v)
        else:
            times.insert(pos, t)
            state.seqs.insert(pos, seq)
            for col, v in zip(state.cols, row):
                col.insert(pos, v)
        for gi, g in enumerate(self._groups):
            run = state.runs[gi]
            if run is None:
                continue
            if g.sliding:
                if t > state.run_from[gi]:
                    run.add(g, state.cols, pos, 1)
            elif (bucket := run.get(g.bucket(t))) is not None:
                bucket.add(g, state.cols, pos, 1)
        o_times, o_ids, o_cols = state.open
        o_times.append(t)
        o_ids.append(id_hash)
        for col, v in zip(o_cols, row):
            col.append(v)
        if len(o_times) == CHUNK:
            k = seq // CHUNK
            state.sealed.append((k, self._encode_chunk(k, state.open)))
            state.chunks.append((k, max(o_times)))
            state.open = (array("d"), array("Q"), [array(tc) for tc in self._typecodes])

    def _advance(self, state: EntityState, t: float) -> None:
        """maxT moves to t: running windows slide, old buckets and chunks go, old events are evicted."""
        times, start = state.times, state.start
        state.max_t = t
        for gi, g in enumerate(self._groups):
            run = state.runs[gi]
            if run is None:
                continue
            if g.sliding:
                frm, new = state.run_from[gi], t - g.width
                if new > frm:
                    for x in range(bisect_right(times, frm, start), bisect_right(times, new, start)):
                        run.add(g, state.cols, x, -1)
                    state.run_from[gi] = new
            else:
                oldest = g.bucket(t - self.allowed_lateness)
                for q in [q for q in run if q < oldest]:
                    del run[q]
        horizon = t - self.retention
        # Keep the newest event older than the horizon (for last / time_since_last).
        k = bisect_left(times, horizon, start) - 1
        if k > start:
            state.start = start = k
            if start > 1024 and 2 * start > len(times):
                del times[:start]
                del state.seqs[:start]
                for col in state.cols:
                    del col[:start]
                state.start = 0
        while state.chunks and state.chunks[0][1] < horizon:
            state.first_chunk = state.chunks.popleft()[0] + 1

    # ------------------------------------------------------------------ records

    def _encode_chunk(self, k: int, chunk: tuple[array, array, list[array]]) -> bytes:
        times, ids, cols = chunk
        parts = [_CHUNK.pack(b"LC", _VERSION, self._layout, k, len(times))]
        for arr in (times, ids, *cols):
            _put(parts, arr)
        return b"".join(parts)

    def encode_head(self, state: EntityState) -> bytes:
        """The head record: counters, the `last` anchor and the open chunk."""
        s = state.start
        anchor = len(state.times) > s and state.times[s] < state.max_t - self.retention
        o_times, o_ids, o_cols = state.open
        parts = [_HEAD.pack(b"LH", _VERSION, int(anchor), self._layout, state.next_seq, state.max_t,
                            state.first_chunk, state.dropped_upto, len(o_times))]
        if anchor:
            _put(parts, state.times[s:s + 1])
            _put(parts, state.seqs[s:s + 1])
            for col in state.cols:
                _put(parts, col[s:s + 1])
        for arr in (o_times, o_ids, *o_cols):
            _put(parts, arr)
        return b"".join(parts)

    def chunks_of(self, head: bytes) -> range:
        """Numbers of the sealed chunks a head record needs."""
        try:
            _, _, _, _, next_seq, _, first_chunk, _, _ = _HEAD.unpack_from(head, 0)
        except struct.error:
            raise StateFormatError("entity state is truncated") from None
        return range(first_chunk, next_seq // CHUNK)

    def decode(self, head: bytes, chunks: Callable[[int], bytes | None]) -> EntityState:
        """The state from its head record and `chunks(number)` (the sealed chunk records)."""
        try:
            magic, version, flags, layout, next_seq, max_t, first_chunk, dropped_upto, n_open = \
                _HEAD.unpack_from(head, 0)
        except struct.error:
            raise StateFormatError("entity state is truncated") from None
        if magic != b"LH" or version != _VERSION:
            raise StateFormatError(f"not a version-{_VERSION} entity state")
        if layout != self._layout:
            raise StateFormatError("entity state was written for different feature definitions")
        if n_open != next_seq % CHUNK or not dropped_upto <= first_chunk <= next_seq // CHUNK:
            raise StateFormatError("entity state counters are inconsistent")
        view = memoryview(head)
        pos = _HEAD.size
        tcs = self._typecodes
        state = self.new_state()
        state.next_seq, state.max_t, state.first_chunk, state.dropped_upto = next_seq, max_t, first_chunk, dropped_upto
        anchor = None
        if flags & 1:
            values = []
            for tc in ("d", "q", *tcs):  # time, arrival number, row
                arr, pos = _take(view, pos, tc, 1)
                values.append(arr[0])
            anchor = (values[0], values[1], values[2:])
        o_times, pos = _take(view, pos, "d", n_open)
        o_ids, pos = _take(view, pos, "Q", n_open)
        o_cols = []
        for tc in tcs:
            arr, pos = _take(view, pos, tc, n_open)
            o_cols.append(arr)
        if pos != len(head):
            raise StateFormatError("entity state has trailing bytes")
        state.open = (o_times, o_ids, o_cols)
        # every event of the live chunks and the open chunk, with its arrival number
        parts: list[tuple[array, int, list[array]]] = []
        for k in range(first_chunk, next_seq // CHUNK):
            data = chunks(k)
            if data is None:
                raise StateFormatError(f"entity state chunk {k} is missing")
            c_times, _, c_cols = self._decode_chunk(data, k)
            state.chunks.append((k, max(c_times)))
            parts.append((c_times, k * CHUNK, c_cols))
        parts.append((o_times, next_seq - n_open, o_cols))
        horizon = max_t - self.retention
        events = [(t, base + x, x, c_cols) for c_times, base, c_cols in parts
                  for x, t in enumerate(c_times) if t >= horizon]
        events.sort(key=lambda e: (e[0], e[1]))
        if anchor is not None:
            state.times.append(anchor[0])
            state.seqs.append(anchor[1])
            for col, v in zip(state.cols, anchor[2]):
                col.append(v)
        for t, seq, x, c_cols in events:
            state.times.append(t)
            state.seqs.append(seq)
            for col, src in zip(state.cols, c_cols):
                col.append(src[x])
        return state

    def _decode_chunk(self, data: bytes, k: int) -> tuple[array, array, list[array]]:
        try:
            magic, version, layout, number, n = _CHUNK.unpack_from(data, 0)
        except struct.error:
            raise StateFormatError("entity state chunk is truncated") from None
        if magic != b"LC" or version != _VERSION or layout != self._layout or number != k or n != CHUNK:
            raise StateFormatError(f"entity state chunk {k} is not a chunk of this state")
        view = memoryview(data)
        times, pos = _take(view, _CHUNK.size, "d", n)
        ids, pos = _take(view, pos, "Q", n)
        cols = []
        for tc in self._typecodes:
            arr, pos = _take(view, pos, tc, n)
            cols.append(arr)
        if pos != len(data):
            raise StateFormatError("entity state chunk has trailing bytes")
        return times, ids, cols


# ---------------------------------------------------------------------------- the store

class KV(Protocol):
    """The key-value store `FeatureStore` persists entity states in (one table partition)."""

    def get(self, key: bytes) -> bytes | None: ...

    def set(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...


HEAD, CHUNK_KIND, SEEN = b"h", b"c", b"s"
_KEYLEN = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_SEEN = struct.Struct("<dq")  # event time, arrival number


def state_key(entity: bytes, kind: bytes, suffix: bytes = b"") -> bytes:
    """Key of one of an entity's records: the length-prefixed entity, the kind, a suffix."""
    return _KEYLEN.pack(len(entity)) + entity + kind + suffix


def parse_state_key(key: bytes) -> tuple[bytes, bytes]:
    """(entity, kind) of a state key."""
    n = _KEYLEN.unpack_from(key, 0)[0]
    return key[4:4 + n], key[4 + n:5 + n]


class Processed(NamedTuple):
    """What `FeatureStore.process` did with one event."""

    status: Literal["new", "duplicate", "late"]
    record: bytes | None  # new: the rendered record; duplicate: the original's; late: None
    behind: float = 0.0  # late: seconds behind the entity's newest event


class FeatureStore:
    """Entity states of one FeatureEngine in a key-value store, with an LRU of decoded states.

    Per entity (keys from `state_key`): the head record, sealed chunk records (numbered), and a
    "seen" record per kept event (key: its event id hash) holding its time, arrival number and the
    record emitted for it. A state is decoded on a cache miss and kept; every change is written
    through at once, so the store always holds the latest state and the cache can be dropped at
    any time (e.g. on a partition revocation).

    Crash safety. The store's writes reach a changelog in the order of each key's last write
    (`BatchTable`), batch after batch, and a crash may cut that log anywhere. Every cut must leave
    a readable state, so: per event, the seen record and any sealed chunk are written before the
    head that counts them; a seen record counts only if its arrival number is below the head's (one
    from a cut-off batch is ignored and overwritten when the event comes again); and a chunk that
    left the retention is deleted (with its seen records) only in a later batch (`new_batch`) than
    the head that stopped naming it."""

    def __init__(self, engine: FeatureEngine, *, cache_events: int = 2_000_000, cache_entities: int = 20_000):
        self.engine = engine
        self.cache_events, self.cache_entities = cache_events, cache_entities
        self._cache: OrderedDict[tuple[Any, bytes], EntityState] = OrderedDict()
        self._cached_events = 0  # sum of len(state) + 1 over the cache, as of the last touch
        self._sizes: dict[tuple[Any, bytes], int] = {}
        self.epoch = 0  # the current batch (see new_batch)

    def new_batch(self) -> None:
        """Mark the start of a batch: writes after this reach the changelog after those before it."""
        self.epoch += 1

    def state(self, kv: KV, scope: Any, entity: bytes) -> EntityState:
        """The entity's state (decoded from `kv` on a cache miss). `scope` names the store (e.g. the
        partition) so that states of different stores never mix in the cache."""
        key = (scope, entity)
        state = self._cache.get(key)
        if state is not None:
            self._cache.move_to_end(key)
            return state
        head = kv.get(state_key(entity, HEAD))
        if head is None:
            state = self.engine.new_state()
        else:
            state = self.engine.decode(head, lambda k: kv.get(state_key(entity, CHUNK_KIND, _U64.pack(k))))
            state.drop_epoch = self.epoch  # the head may be this batch's: delete nothing before the next
        self._cache[key] = state
        self._account(key, state)
        return state

    def _account(self, key: tuple[Any, bytes], state: EntityState) -> None:
        size = len(state) + 1
        self._cached_events += size - self._sizes.get(key, 0)
        self._sizes[key] = size
        cache = self._cache
        while len(cache) > 1 and (len(cache) > self.cache_entities or self._cached_events > self.cache_events):
            old, _ = cache.popitem(last=False)
            self._cached_events -= self._sizes.pop(old)

    def forget(self, scope: Any, entity: bytes) -> None:
        """Forget one cached state (its records changed underneath, e.g. in a replica)."""
        key = (scope, entity)
        if self._cache.pop(key, None) is not None:
            self._cached_events -= self._sizes.pop(key)

    def drop(self, scope: Any = None) -> None:
        """Forget cached states (of one scope, or all)."""
        for key in [k for k in self._cache if scope is None or k[0] == scope]:
            del self._cache[key]
            self._cached_events -= self._sizes.pop(key)

    def process(self, kv: KV, scope: Any, entity: bytes, event_id: str, t: float, fields: dict[str, Any],
                render: Callable[[Features], bytes]) -> Processed:
        """Process one event: "duplicate" (the original's record again, nothing changed), "late"
        (nothing changed) or "new": its features are computed, `render(features)` makes the record
        to emit (if it raises, nothing has changed), then the state is updated and written."""
        engine = self.engine
        if not _isfinite(t):
            raise ValueError(f"event time must be finite, got {t!r}")
        state = self.state(kv, scope, entity)
        id_hash = event_id_hash(event_id)
        seen_key = state_key(entity, SEEN, _U64.pack(id_hash))
        seen = kv.get(seen_key)
        if seen is not None:
            seen_t, seq = _SEEN.unpack_from(seen, 0)
            if seq < state.next_seq and seen_t >= state.max_t - engine.retention:
                return Processed("duplicate", seen[_SEEN.size:])
        if engine.is_late(state, t):
            return Processed("late", None, state.max_t - t)
        row = engine.row(fields)
        record = render(engine.query(state, t, row))
        if state.dropped_upto < state.first_chunk and state.drop_epoch < self.epoch:
            self._delete_dropped(kv, entity, state)
        seq = state.next_seq
        first_chunk = state.first_chunk
        engine.insert(state, id_hash, t, row)
        if state.first_chunk != first_chunk:
            state.drop_epoch = self.epoch
        kv.set(seen_key, _SEEN.pack(t, seq) + record)
        for k, data in state.sealed:
            kv.set(state_key(entity, CHUNK_KIND, _U64.pack(k)), data)
        state.sealed.clear()
        kv.set(state_key(entity, HEAD), engine.encode_head(state))
        self._account((scope, entity), state)
        return Processed("new", record)

    def _delete_dropped(self, kv: KV, entity: bytes, state: EntityState) -> None:
        """Delete the records of the chunks that left the retention (seen records first, then the
        chunk: a crash in between leaves a chunk to delete again, never a seen record without it)."""
        for k in range(state.dropped_upto, state.first_chunk):
            chunk_key = state_key(entity, CHUNK_KIND, _U64.pack(k))
            data = kv.get(chunk_key)
            if data is None:
                continue
            for h in self.engine._decode_chunk(data, k)[1]:
                key = state_key(entity, SEEN, _U64.pack(h))
                # unless the id came again later as a new event (after its first time was evicted)
                if (seen := kv.get(key)) is not None and _SEEN.unpack_from(seen, 0)[1] // CHUNK == k:
                    kv.delete(key)
            kv.delete(chunk_key)
        state.dropped_upto = state.first_chunk

    def snapshot(self, kv: KV, scope: Any, entity: bytes, t: float, fields: dict[str, Any]) -> Features:
        """Request-time features (serving), without changing anything."""
        return self.engine.snapshot(self.state(kv, scope, entity), t, fields)
