"""The online feature engine: one pure implementation for the feature service AND serving.

No I/O, no Kafka: the caller keeps one `EntityState` per entity (e.g. in a faust table whose values
are `EntityState.to_bytes()`), feeds it events with `FeatureEngine.apply`, and serving asks
`FeatureEngine.snapshot` for request-time features. Training examples are built from the snapshots
`apply` emits, so training and serving compute features with the same code.

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
      mean is None or 0, or e.f is missing).
    - ``last``: the f of the x in H with x.t <= t that has the greatest (x.t, arrival index)
      (None if there is no such x, or if that x has no f).
    - ``time_since_last``: t - max(x.t for x in H with x.t <= t), seconds; None if no such x.
  Types: count/distinct are Python ints; sum/mean/std/min/max/ratio are Python floats (also for
  int fields); ``last`` is a float for float/timestamp fields (timestamps as epoch seconds), an
  int for int fields, 0/1 for bool fields and the index into the spec's ``values`` for category
  fields (``last`` of a string field is refused at construction: it is not a number). A result
  that would be NaN or +-inf is None.
* Lateness: maxT = the largest event time of E's accepted events. An event with
  t < maxT - allowed_lateness is LATE: rejected, state unchanged, status "late", no features.
* Retention: R = largest window (tumbling windows count as their size) + allowed_lateness. Only
  the events with x.t >= maxT - R are kept, plus the newest (greatest (t, arrival)) event older
  than that, so ``last``/``time_since_last`` stay exact after eviction. Since every accepted event
  has t >= maxT - allowed_lateness, the snapshot of every accepted event is exact.
* Duplicates: an event whose event_id equals that of a kept event with x.t >= maxT - R is a
  DUPLICATE (checked before lateness; the id alone decides, whatever the payload): state
  unchanged, status "duplicate", and the features are those the original got, recomputed from
  the kept events that preceded it in arrival order (with the original's time and fields), so a
  redelivery re-emits an identical snapshot. If eviction may have removed an event that snapshot
  depended on (only possible once the original is older than maxT - allowed_lateness, or when
  the largest window is shorter than the allowed lateness), the features are None rather than a
  different snapshot: the caller then has nothing to re-emit. A redelivery of an evicted event
  is late (its t < maxT - R <= maxT - allowed_lateness).
* Serving: ``snapshot(state, t, fields)`` = the features an event at t with these fields would get
  from ``apply`` now, without changing the state (exact for t >= maxT - allowed_lateness; for an
  older t, which ``apply`` would reject as late, it is computed from the kept events).

State layout: per entity, events sorted by (t, arrival) in parallel columns: ``array('d')`` times,
arrival numbers, 8-byte blake2b digests of the event ids, and one column per event field that
some feature uses: float64 for int/float/timestamp fields (NaN = missing; ints beyond +-2**53 are
rounded), int8/int16 category
codes (index into ``values``) and bool 0/1 (-1 = missing), 8-byte blake2b digests for string
fields (0 = missing; distinct counts of strings are counts of distinct digests). ``to_bytes`` is a
little-endian struct/array encoding (no pickle).
"""
from __future__ import annotations

import hashlib
import math
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from datetime import datetime
from typing import Any, Literal, NamedTuple

from shared.errors import SpecError
from shared.serialization import parse_time, to_utc
from shared.spec import WINDOWED, PipelineSpec

__all__ = ["Applied", "EntityState", "FeatureEngine", "StateFormatError", "event_id_hash"]

_NAN = float("nan")
_NEG_INF = float("-inf")
_isfinite = math.isfinite
_floor = math.floor
_LITTLE = sys.byteorder == "little"

Status = Literal["new", "duplicate", "late"]


class Applied(NamedTuple):
    """What `FeatureEngine.apply` did with one event."""

    status: Status  # "new" (state updated), "duplicate" or "late" (state unchanged)
    # The point-in-time snapshot; None when late, or for a duplicate whose snapshot eviction made
    # unknowable (see the module docstring).
    features: dict[str, float | int | None] | None


class StateFormatError(ValueError):
    """Stored entity state is corrupt or was written for different feature definitions."""


def event_id_hash(event_id: str) -> int:
    """First 8 bytes of blake2b(event_id), as an unsigned int (the dedup key kept in state)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def _digest(value: Any) -> int:
    h = int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "little")
    return h or 1  # 0 marks a missing value


# ---------------------------------------------------------------------------- state

# Header: magic, format version, flags (bit0 truncated, bits 1-2 arrival column width), column count,
# layout id, event count, arrival base, next arrival number, maxT.
_HEAD = struct.Struct("<2sBBBIIQQd")
_MAGIC = b"LF"
_VERSION = 1
_SEQ_CODES = ("H", "I", "Q")
_SEQ_LIMIT = {"H": 0xFFFF, "I": 0xFFFFFFFF, "Q": 0xFFFFFFFFFFFFFFFF}


class EntityState:
    """One entity's retained events, column-wise and sorted by (event time, arrival number).

    Arrival numbers are stored relative to `seq_base` in the narrowest unsigned array that holds
    them (rebased when they outgrow it), so serialization is a plain copy of each array.
    """

    __slots__ = ("layout", "typecodes", "times", "seqs", "seq_base", "ids", "cols", "next_seq", "max_t",
                 "truncated")

    def __init__(self, layout: int, typecodes: str) -> None:
        self.layout = layout  # digest of the column layout (which fields, types, category values)
        self.typecodes = typecodes
        self.times = array("d")
        self.seqs = array("H")  # arrival number - seq_base
        self.seq_base = 0
        self.ids = array("Q")  # event_id_hash of each event
        self.cols = [array(tc) for tc in typecodes]
        self.next_seq = 0  # arrival number of the next accepted event
        self.max_t = _NEG_INF
        self.truncated = False  # some event has been evicted

    def __len__(self) -> int:
        return len(self.times)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EntityState) and self.to_bytes() == other.to_bytes()

    def __repr__(self) -> str:
        return f"EntityState(events={len(self)}, next_seq={self.next_seq}, max_t={self.max_t})"

    def arrivals(self) -> list[int]:
        """Absolute arrival number of each kept event (in storage order)."""
        return [self.seq_base + s for s in self.seqs]

    def _arrival(self) -> int:
        """Take the next arrival number; returns it relative to seq_base (rebasing/widening if needed)."""
        rel = self.next_seq - self.seq_base
        seqs = self.seqs
        if rel > _SEQ_LIMIT[seqs.typecode]:
            low = min(seqs) if seqs else rel
            self.seq_base += low
            rel -= low
            tc = next(c for c in _SEQ_CODES if rel <= _SEQ_LIMIT[c])
            self.seqs = array(tc, [s - low for s in seqs])
        self.next_seq += 1
        return rel

    def copy(self) -> EntityState:
        new = EntityState.__new__(EntityState)
        new.layout, new.typecodes, new.seq_base = self.layout, self.typecodes, self.seq_base
        new.times, new.seqs, new.ids = array("d", self.times), array(self.seqs.typecode, self.seqs), \
            array("Q", self.ids)
        new.cols = [array(c.typecode, c) for c in self.cols]
        new.next_seq, new.max_t, new.truncated = self.next_seq, self.max_t, self.truncated
        return new

    def to_bytes(self) -> bytes:
        """Compact little-endian encoding: header, column typecodes, then each column's raw array."""
        flags = int(self.truncated) | (_SEQ_CODES.index(self.seqs.typecode) << 1)
        parts = [
            _HEAD.pack(_MAGIC, _VERSION, flags, len(self.cols), self.layout, len(self.times), self.seq_base,
                       self.next_seq, self.max_t),
            self.typecodes.encode(),
        ]
        for arr in (self.times, self.seqs, self.ids, *self.cols):
            if not _LITTLE and arr.itemsize > 1:
                arr = array(arr.typecode, arr)
                arr.byteswap()
            parts.append(arr.tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> EntityState:
        try:
            magic, version, flags, ncols, layout, n, seq_base, next_seq, max_t = _HEAD.unpack_from(data, 0)
        except struct.error:
            raise StateFormatError("entity state is truncated") from None
        if magic != _MAGIC or version != _VERSION or (flags >> 1) > 2:
            raise StateFormatError(f"not a version-{_VERSION} entity state")
        view = memoryview(data)
        pos = _HEAD.size + ncols
        state = cls.__new__(cls)
        state.layout = layout
        state.typecodes = typecodes = bytes(view[_HEAD.size:pos]).decode("ascii", "replace")
        state.seq_base, state.next_seq, state.max_t = seq_base, next_seq, max_t
        state.truncated = bool(flags & 1)
        try:
            arrays = [array(tc) for tc in ("d", _SEQ_CODES[flags >> 1], "Q", *typecodes)]
        except ValueError as exc:  # unknown typecode
            raise StateFormatError(f"bad entity state: {exc}") from None
        for arr in arrays:
            end = pos + n * arr.itemsize
            if end > len(data):
                raise StateFormatError("entity state is truncated")
            arr.frombytes(view[pos:end])
            if not _LITTLE and arr.itemsize > 1:
                arr.byteswap()
            pos = end
        if pos != len(data):
            raise StateFormatError("entity state has trailing bytes")
        state.times, state.seqs, state.ids, *state.cols = arrays
        return state


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

        # One column per event field used by some feature, in order of first use.
        columns: dict[str, _Column] = {}
        for d in defs:
            if d.field is None or d.field in columns:
                continue
            fs = fields[d.field]
            if fs.type in ("int", "float", "timestamp"):
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
        nf = len(defs)
        self._nf = nf
        groups: dict[tuple[str, float], dict] = {}
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
            g = groups.setdefault((d.kind, d.window.total_seconds()), {"count": [], "num": {}, "dist": {}})
            if d.agg == "count":
                g["count"].append(i)
            elif d.agg == "distinct":
                g["dist"].setdefault(col_index[d.field], []).append(i)
            else:
                slots = g["num"].setdefault(col_index[d.field], {})
                slots.setdefault(d.agg, []).append(i)
        self._groups = []
        for (kind, w), g in groups.items():
            nums = []
            for ci, slots in g["num"].items():
                nums.append((ci, self._columns[ci].optional, *(tuple(slots.get(a, ())) for a in (
                    "sum", "mean", "std", "min", "max", "ratio_to_mean"))))
            dists = []
            for ci, slots in g["dist"].items():
                tc = self._columns[ci].typecode
                missing = _NAN if tc == "d" else 0 if tc == "Q" else -1
                dists.append((ci, tc == "d", missing, tuple(slots)))
            key = (lambda width: lambda x: _floor(x / width))(w)
            self._groups.append((kind == "sliding", w, key, tuple(g["count"]), tuple(nums), tuple(dists)))

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
        return EntityState(self._layout, self._typecodes)

    def load(self, data: bytes | None) -> EntityState:
        """State from stored bytes (None/empty = a new entity); refuses state of other features."""
        if not data:
            return self.new_state()
        state = EntityState.from_bytes(data)
        if state.layout != self._layout or state.typecodes != self._typecodes:
            raise StateFormatError("entity state was written for different feature definitions")
        return state

    def dump(self, state: EntityState) -> bytes:
        return state.to_bytes()

    def is_late(self, state: EntityState, t: float) -> bool:
        """Whether `apply` would reject an event at t as late."""
        return t < state.max_t - self.allowed_lateness

    def _row(self, fields: dict[str, Any]) -> list:
        """The stored value of each column for one event's fields."""
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
        """Process one event of this entity: its snapshot (from earlier events only), then update state."""
        if not _isfinite(t):
            raise ValueError(f"event time must be finite, got {t!r}")
        h = event_id_hash(event_id)
        ids = state.ids
        if h in ids:
            # The kept event with this id inside the retention horizon (an evicted-horizon anchor
            # with the same id does not count: a redelivery of it is late).
            limit = state.max_t - self.retention
            j = ids.index(h)
            while j >= 0 and state.times[j] < limit:
                j = ids.index(h, j + 1) if h in ids[j + 1:] else -1
            if j >= 0:
                return Applied("duplicate", self._replay(state, j))
        if t < state.max_t - self.allowed_lateness:
            return Applied("late", None)
        row = self._row(fields)
        features = self._compute(state, t, row)
        times = state.times
        pos = bisect_right(times, t)
        seq = state._arrival()
        if pos == len(times):
            times.append(t)
            state.seqs.append(seq)
            ids.append(h)
            for col, v in zip(state.cols, row):
                col.append(v)
        else:
            times.insert(pos, t)
            state.seqs.insert(pos, seq)
            ids.insert(pos, h)
            for col, v in zip(state.cols, row):
                col.insert(pos, v)
        if t > state.max_t:
            state.max_t = t
            # Evict events older than maxT - R, keeping the newest of them for last/time_since_last.
            k = bisect_left(times, t - self.retention) - 1
            if k > 0:
                del times[:k]
                del state.seqs[:k]
                del ids[:k]
                for col in state.cols:
                    del col[:k]
                state.truncated = True
        return Applied("new", features)

    def snapshot(self, state: EntityState, t: float, fields: dict[str, Any]) -> dict[str, float | int | None]:
        """Request-time features for serving: what `apply` would return now for an event at t with
        these fields, without changing the state."""
        if not _isfinite(t):
            raise ValueError(f"event time must be finite, got {t!r}")
        return self._compute(state, t, self._row(fields))

    def _replay(self, state: EntityState, j: int) -> dict[str, float | int | None] | None:
        """The snapshot the kept event j got when it arrived, or None if eviction made it unknowable."""
        s, t0 = state.seqs[j], state.times[j]
        keep = [i for i, q in enumerate(state.seqs) if q < s]
        if state.truncated:
            # Evicted events have t <= times[0]; the snapshot is exact if none of them could be in it.
            first = state.times[0]
            for sliding, w, key, *_ in self._groups:
                if (first > t0 - w) if sliding else (key(first) >= key(t0)):
                    return None
            if (self._last or self._since) and not any(state.times[i] <= t0 for i in keep):
                return None
        past = EntityState.__new__(EntityState)
        past.times = array("d", [state.times[i] for i in keep])
        past.cols = [array(c.typecode, [c[i] for i in keep]) for c in state.cols]
        return self._compute(past, t0, [c[j] for c in state.cols])

    def _compute(self, state: EntityState, t: float, row: list) -> dict[str, float | int | None]:
        times = state.times
        cols = state.cols
        out: list = [None] * self._nf
        end = bisect_right(times, t)
        for sliding, w, key, counts, nums, dists in self._groups:
            if sliding:
                start = bisect_right(times, t - w, 0, end)
            else:
                start = bisect_left(times, key(t), 0, end, key=key)
            for i in counts:
                out[i] = end - start
            for ci, optional, i_sum, i_mean, i_std, i_min, i_max, i_ratio in nums:
                vals = cols[ci][start:end]
                if optional:
                    vals = [v for v in vals if v == v]
                m = len(vals)
                if not m:
                    for i in i_sum:
                        out[i] = 0.0
                    continue
                if i_min:
                    lo = min(vals)
                    for i in i_min:
                        out[i] = lo
                if i_max:
                    hi = max(vals)
                    for i in i_max:
                        out[i] = hi
                total = sum(vals)
                if not _isfinite(total):  # overflow: sum, mean, std and ratio are undefined
                    continue
                for i in i_sum:
                    out[i] = total
                mean = total / m
                for i in i_mean:
                    out[i] = mean
                if i_std and m > 1:
                    ss = 0.0
                    for v in vals:
                        ss += (v - mean) * (v - mean)
                    std = math.sqrt(ss / (m - 1))
                    if _isfinite(std):
                        for i in i_std:
                            out[i] = std
                if i_ratio and mean != 0.0:
                    v = row[ci]
                    if v == v:
                        r = v / mean
                        if _isfinite(r):
                            for i in i_ratio:
                                out[i] = r
            for ci, is_double, missing, slots in dists:
                vals = cols[ci][start:end]
                if is_double:
                    n = len({v for v in vals if v == v})
                else:
                    seen = set(vals)
                    seen.discard(missing)
                    n = len(seen)
                for i in slots:
                    out[i] = n
        if end:
            j = end - 1
            for i, ci, conv, is_double in self._last:
                v = cols[ci][j]
                if (v == v) if is_double else (v != -1):
                    out[i] = conv(v)
            if self._since:
                gap = t - times[j]
                for i in self._since:
                    out[i] = gap
        return dict(zip(self.feature_names, out))
