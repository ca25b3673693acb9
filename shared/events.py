"""Event schemas on the wire: explicit, versioned JSON with an envelope; never pickles or class paths.

Every record a Loopline service produces is one of the models below, serialized with
`shared.serialization.dumps`. Consumers dedup by `event_id`.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)
from typing_extensions import NotRequired, TypedDict

from pydantic_core import PydanticCustomError

from shared.errors import ValidationFailed
from shared.event_codec import FastEvents
from shared.serialization import dumps, to_utc
from shared.spec import FieldSpec, LabelSpec, Name, PipelineSpec, number_text, reads_as_number

SCHEMA_VERSION = 1
# Without an entity every event belongs to one global stream; one key keeps it in one
# partition, in order, so stream state stays whole.
GLOBAL_KEY = "__global__"
_ID_NAMESPACE = uuid.UUID("6f1c7d1e-5a4b-4c1a-9d55-0a4c1e0b9f10")
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
_EVENT_ID_TEXT = re.compile(r"[A-Za-z0-9._:\-]{1,128}").fullmatch  # EventId's rule
_DATE_TIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt _]\d{2}:\d{2}")


def _date_time_text(value: Any) -> Any:
    # The schema says "string, format date-time": refuse what pydantic's lax datetime would also take
    # (Unix numbers, digit strings, bare dates), so the documented type is the accepted one.
    if isinstance(value, datetime) or (isinstance(value, str) and _DATE_TIME_TEXT.match(value)):
        return value
    raise PydanticCustomError("datetime_type", "Input should be an RFC 3339 date-time string, "
                                               "e.g. 2026-11-26T10:00:00Z (numbers are not accepted)")


def _to_utc_checked(value: datetime) -> datetime:
    try:
        return to_utc(value)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        raise PydanticCustomError("datetime_type", "Input is out of the representable range") from None


# An event or label time on the wire: an RFC 3339 string (aware; naive means UTC), normalized to UTC.
Timestamp = Annotated[datetime, BeforeValidator(_date_time_text), AfterValidator(_to_utc_checked)]


class Wire(BaseModel):
    """Base of every wire model: strict about unknown fields, no NaN/inf."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Envelope(Wire):
    event_id: EventId = Field(description="Unique id; consumers drop a repeated id (idempotency key)")
    type: str = Field(description="Event type, e.g. the spec's event type, 'label', 'snapshot'")
    schema_version: int = Field(SCHEMA_VERSION, ge=1, description="Version of this record's schema")
    occurred_at: datetime = Field(description="Event time (UTC)")


# ---------------------------------------------------------------- ingest → events, labels

class Event(Envelope):
    """A validated domain event (topic `events`), keyed by entity (GLOBAL_KEY without entities)."""

    entity: str | None = Field(None, description="Entity key value, if the spec declares an entity")
    ingested_at: datetime = Field(description="When ingest accepted it (UTC)")
    source: Literal["http", "kafka", "replay", "serving"] = Field(
        description="Which path accepted it: ingest (http, kafka, replay) or serving (forwarded with a prediction)")
    data: dict[str, Any] = Field(description="The event's fields, validated against the spec")


class LabelIn(Wire):
    """What a client sends to POST /v1/labels (or to the labels.raw topic)."""

    event_id: EventId = Field(description="Id of the event this outcome belongs to")
    value: StrictBool | StrictInt | float | StrictStr = Field(description="The outcome")
    observed_at: Timestamp | None = Field(None, description=(
        "When the outcome became known (RFC 3339; without an offset, UTC). It decides lateness: a label "
        "observed more than the spec's label.max_delay after its event is not joined (dead letter "
        "`late_label`). Defaults to ingest's clock on arrival, so backfilled labels must carry it. At "
        "most LOOPLINE_MAX_FUTURE_S (default 300 s) ahead of ingest's clock (else code `future`)"))
    entity: str | None = Field(None, max_length=256, description="Entity of the event, if known")


class Label(Envelope):
    """A validated outcome (topic `labels`), keyed by the event id it refers to."""

    type: Literal["label"] = "label"
    target_event_id: EventId = Field(description="The event this label belongs to")
    value: bool | int | float | str = Field(description="The outcome, typed per the spec's label")
    entity: str | None = None
    ingested_at: datetime
    source: Literal["http", "kafka", "replay"]


def label_id(target_event_id: str) -> str:
    """Deterministic label id: a re-sent label for the same event is a duplicate, not a second label."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"label:{target_event_id}"))


_NS_BYTES = _ID_NAMESPACE.bytes


def _uuid_str(raw: bytes, version: int) -> str:
    """RFC 4122 string of 16 bytes with the version and variant bits set (what str(uuid.UUID) prints)."""
    b = bytearray(raw)
    b[6] = (b[6] & 0x0F) | (version << 4)
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def derived_event_id(topic: str, partition: int, offset: int) -> str:
    """Stable id for a raw record sent without one, so a redelivered record keeps its id: the text
    `topic:partition:offset` (e.g. `acme.events.raw:3:1042`, which also says where the record came
    from) when it is a valid event id, as it is for any Kafka topic name of up to ~100 characters;
    otherwise (a long topic name, a file path) str(uuid.uuid5(_ID_NAMESPACE, that text))."""
    text = f"{topic}:{partition}:{offset}"
    if _EVENT_ID_TEXT(text):
        return text
    return _uuid_str(hashlib.sha1(_NS_BYTES + text.encode()).digest()[:16], 5)


def input_of(value: Any, kind: Literal["event", "label"]) -> Any:
    """What a client would have sent for a record read back from Kafka: an `Event` envelope (from
    `events`) as its fields plus `event_id`, a `Label` record (from `labels`) as `{event_id, value,
    observed_at, entity}`; anything else (a raw record, already in that shape) unchanged."""
    if not isinstance(value, dict):
        return value
    if kind == "label" and value.get("type") == "label" and "target_event_id" in value:
        return {"event_id": value["target_event_id"], "value": value["value"],
                "observed_at": value["occurred_at"], "entity": value.get("entity")}
    if kind == "event" and "data" in value and "event_id" in value and "type" in value:
        return {**value["data"], "event_id": value["event_id"]}
    return value


def new_event_id() -> str:
    """A random (version 4) UUID string, as str(uuid.uuid4()) but ~3x cheaper."""
    return _uuid_str(os.urandom(16), 4)


# ---------------------------------------------------------------- features → features, training-examples

class FeatureSnapshot(Envelope):
    """Point-in-time features of an entity just before one of its events (topic `features`)."""

    type: Literal["snapshot"] = "snapshot"
    entity: str | None
    feature_hash: str = Field(description="Digest of the feature definitions that produced it")
    features: dict[str, float | int | None] = Field(description="Feature values from strictly earlier events")
    data: dict[str, Any] = Field(description="The event's own fields")


class TrainingExample(Envelope):
    """A snapshot joined with its label (topic `training-examples`); event_id is the event's id."""

    type: Literal["training_example"] = "training_example"
    entity: str | None
    feature_hash: str
    features: dict[str, float | int | None]
    data: dict[str, Any]
    label: bool | int | float | str
    labelled_at: datetime


# ---------------------------------------------------------------- trainer → models

Stage = Literal["candidate", "champion", "challenger", "shadow", "rejected", "archived"]
# Times in the registry are compared (the champion is the latest champion record): always aware UTC.
UtcTime = Annotated[datetime, AfterValidator(_to_utc_checked)]
# [first, next): the offsets of one partition that a model was trained on.
OffsetRange = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]


class DataRange(Wire):
    """The training data a model version saw: topic offsets per partition and/or an event-time range."""

    topic: str | None = Field(None, description="Topic the examples were read from (e.g. training-examples)")
    offsets: dict[str, OffsetRange] | None = Field(
        None, description="Partition (as text) -> [first, next) offsets read from it")
    start: UtcTime | None = Field(None, description="Event time of the earliest example (UTC)")
    end: UtcTime | None = Field(None, description="Event time of the latest example (UTC)")
    examples: int = Field(ge=0, description="How many labelled examples were used (training + holdout)")

    @model_validator(mode="after")
    def _ordered(self) -> DataRange:
        if self.offsets and any(first > nxt for first, nxt in self.offsets.values()):
            raise ValueError("an offset range must be [first, next) with first <= next")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError("'start' is after 'end'")
        return self


class Lineage(Wire):
    """Everything needed to trace a model version back to what produced it."""

    feature_hash: str = Field(description="The spec's feature-definition hash (PipelineSpec.feature_hash)")
    spec_name: str = Field(description="Name of the pipeline spec")
    data: DataRange = Field(description="The training data: offsets per partition and/or event-time range")
    code_version: str = Field(description="Loopline code version: git commit, or the package version")
    packages: dict[str, str] = Field(description="Versions of python and the ML packages that trained it")


class ModelVersion(Wire):
    """One model version's registry record (compacted topic `models`, key '<name>:<version>').

    The topic is the registry's log: the latest record per key is the version's current state, and
    any service rebuilds the registry by reading it (shared.registry.Registry). A stage change is a
    new record for the same key with a later `updated_at`. The artifact is written completely before
    its first record is published."""

    name: Name = Field(description="The spec's model candidate name (models[].name)")
    version: int = Field(ge=1, description="Version number, counted per candidate name from 1")
    stage: Stage = Field(description=(
        "candidate (trained, not yet judged), champion (serves traffic), challenger (passed the gate, may "
        "replace the champion), shadow (scored alongside the champion, not served), rejected (failed the "
        "gate), archived (retired)"))
    library: Literal["river", "sklearn"] = Field(description="Library of the model")
    algorithm: str = Field(description="Algorithm name from shared.spec.ALGORITHMS")
    task: Literal["binary", "multiclass", "regression"] = Field(description="The spec's label type")
    artifact_uri: str = Field(description="Where the serialized model lives in the artifact store")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex digest of the artifact bytes")
    signature: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description=(
        "HMAC-SHA256 hex of the artifact bytes under the deployment's signing key; None without a key"))
    metrics: dict[str, float] = Field(description="Metric name -> value on the holdout (or prequential)")
    evaluation: Literal["holdout", "prequential"] = Field(description="How `metrics` were measured")
    trained_at: UtcTime = Field(description="When training finished (UTC)")
    updated_at: UtcTime = Field(description="When this record (e.g. a stage change) was written (UTC)")
    params: dict[str, Any] = Field(description="Constructor parameters the model was built with")
    inputs: list[str] = Field(description="The model's input columns in order (shared.modeling.Vectorizer)")
    classes: list[str] | None = Field(None, description=(
        "Class names in the order predict uses (multiclass: probability columns; binary: [negative, "
        "positive]); None for regression"))
    lineage: Lineage = Field(description="Data, feature definitions, code and packages that produced it")
    reference: dict[str, Any] = Field(description=(
        "Reference statistics of the training data per input, of the label and of the holdout scores "
        "(shared.modeling.reference_statistics); the monitor compares live traffic with them"))
    reason: str = Field("", description="Why it was rejected, promoted or archived")
    parent_version: int | None = Field(None, ge=1, description="The version it was retrained from, if any")

    @property
    def key(self) -> str:
        """Its key on the `models` topic."""
        return f"{self.name}:{self.version}"

    def staged(self, stage: Stage, *, at: datetime, reason: str = "") -> ModelVersion:
        """The record of this version moved to `stage` at `at` (validated, unlike model_copy)."""
        changed = {"stage": stage, "updated_at": at, "reason": reason}
        return ModelVersion.model_validate({**self.model_dump(), **changed})


# ---------------------------------------------------------------- serving → predictions

class Prediction(Wire):
    """Every prediction served (topic `predictions`, key: the entity, or the event id without
    entities): which model version scored which event with which exact inputs."""

    prediction_id: EventId = Field(description="Unique id of this prediction (a shadow's has its own)")
    type: Literal["prediction"] = "prediction"
    schema_version: int = Field(SCHEMA_VERSION, ge=1)
    event_id: EventId = Field(description="The scored event's id (its label, when it comes, carries the same id)")
    occurred_at: datetime = Field(description="The scored event's time (UTC)")
    predicted_at: datetime = Field(description="When serving scored it (UTC)")
    entity: str | None = Field(description="The event's entity, None without entities")
    model_name: str
    model_version: int = Field(ge=1)
    variant: Literal["champion", "challenger", "shadow"] = Field(
        description="champion: answered; challenger: answered for the canary share of entities; shadow: logged only")
    score: float = Field(description="Binary: P(positive); multiclass: the top class's probability; regression: "
                                     "the prediction")
    predicted: bool | int | float | str = Field(description="The decision (binary: score >= the spec's threshold), "
                                                         "class or value")
    proba: dict[str, float] | None = Field(None, description="Multiclass: every class's probability")
    features: dict[str, float | None] = Field(description="The exact model inputs, by input name (None: missing)")
    feature_hash: str = Field(description="Digest of the feature definitions the request-time features used")
    state_event_time: datetime | None = Field(
        None, description="Newest event of the entity the feature state had applied (staleness)")
    latency_ms: float = Field(ge=0, description="From the request's arrival to the scored response")


# ---------------------------------------------------------------- monitor → alerts

AlertKind = Literal["data_drift", "prediction_drift", "concept_drift", "performance", "bias", "skew"]
Severity = Literal["info", "warning", "critical"]


class Alert(Wire):
    """A monitor finding (topic `alerts`, key = fingerprint; a resolve reuses the fingerprint).

    The fingerprint is the stable dedup key of what is watched (kind, model, subject, statistic): one
    record when it starts firing, one when it resolves; windows in between are not re-sent."""

    fingerprint: str
    kind: AlertKind
    status: Literal["firing", "resolved"]
    severity: Severity
    subject: str = Field(description="Feature, segment or model the alert is about")
    statistic: str = Field("", description="What `value` is: psi, ks_pvalue, chi2_pvalue, adwin, roc_auc, ...")
    value: float
    threshold: float
    window: int = Field(0, ge=0, description="Observations (predictions or labelled predictions) the value is over")
    model_name: str | None = None
    model_version: int | None = None
    started_at: datetime
    updated_at: datetime
    details: dict[str, Any] = Field(default_factory=dict)


class Subscription(Wire):
    """An on-call webhook subscription (compacted topic `subscriptions`, key = id; a tombstone removes
    it). Alerts matching every non-empty filter are delivered with Standard Webhooks headers signed
    with `secret`."""

    id: EventId
    url: str = Field(pattern=r"^https?://", max_length=2048, description="Where alerts are POSTed")
    kinds: list[AlertKind] = Field(default_factory=list, description="Alert kinds to deliver; empty: all")
    severities: list[Severity] = Field(default_factory=list, description="Severities to deliver; empty: all")
    models: list[Name] = Field(default_factory=list, description="Model names to deliver; empty: all")
    secret: str = Field(pattern=r"^whsec_[A-Za-z0-9+/=]{16,}$",
                        description="Standard Webhooks signing secret: 'whsec_' + base64 of the key bytes")
    template: Literal["standard", "slack", "pagerduty"] = Field(
        "standard", description="Payload shape: the alert as JSON, a Slack message, or a PagerDuty Events v2 event")
    created_at: UtcTime
    disabled: bool = False
    disabled_reason: str = ""

    def matches(self, alert: Alert) -> bool:
        return (not self.disabled and (not self.kinds or alert.kind in self.kinds)
                and (not self.severities or alert.severity in self.severities)
                and (not self.models or alert.model_name in self.models))


# ---------------------------------------------------------------- validation of incoming events

_CODES = {
    "missing": "missing",
    "extra_forbidden": "unknown_field",
    "literal_error": "not_allowed_value",
    "string_too_long": "too_long",
    "string_too_short": "too_short",
    "string_pattern_mismatch": "bad_format",
    "finite_number": "not_finite",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "greater_than": "out_of_range",
    "less_than": "out_of_range",
    "model_type": "not_an_object",
    "dict_type": "not_an_object",
}
REASON_CODES = frozenset(_CODES.values()) | {"wrong_type", "invalid", "invalid_json", "late"} | {
    "future",  # event time (or a label's observed_at) too far ahead of the receiving service's clock
    "too_large",  # the record would exceed the per-record size limit on Kafka
    "empty",  # a request body that holds no records
}


def _reason_code(pydantic_type: str) -> str:
    if pydantic_type in _CODES:
        return _CODES[pydantic_type]
    if pydantic_type.endswith(("_type", "_parsing")) or pydantic_type.startswith("datetime"):
        return "wrong_type"
    return "invalid"


def validation_errors(exc: ValidationError) -> list[dict]:
    """Pydantic errors as [{'field', 'reason', 'code'}] with a bounded code set."""
    return [
        {
            "field": ".".join(str(p) for p in err["loc"]),
            "reason": err["msg"],
            "code": _reason_code(err["type"]),
        }
        for err in exc.errors(include_url=False)
    ]


def _number_only(value: Any) -> Any:
    # JSON numbers only: lax float parsing would accept "12" and True.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("float_type", "Input should be a number")
    return value


def _number_as_text(value: Any) -> Any:
    # A category value written 1 in the spec is the text '1'; an event may send 1, 1.0 or "1".
    # (type() rather than isinstance: True is an int but never a category value.)
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return number_text(value)
    return value


def _annotation(spec: FieldSpec) -> Any:
    bounds = {"ge": spec.min, "le": spec.max}
    match spec.type:
        case "string":
            return Annotated[StrictStr, StringConstraints(max_length=spec.max_length)]
        case "int":  # whole bounds: min 0.5 on an int field is min 1
            return Annotated[StrictInt, Field(ge=None if spec.min is None else math.ceil(spec.min),
                                              le=None if spec.max is None else math.floor(spec.max))]
        case "float":  # Field before the validator: the bounds show as JSON Schema minimum/maximum
            return Annotated[float, Field(allow_inf_nan=False, **bounds), BeforeValidator(_number_only)]
        case "bool":
            return StrictBool
        case "category":
            allowed = Literal[tuple(spec.values)]  # type: ignore[misc]
            # Only values that read as numbers can match a number; other specs skip the extra call per event.
            if any(reads_as_number(v) for v in spec.values or ()):
                return Annotated[allowed, BeforeValidator(_number_as_text)]
            return allowed
        case "timestamp":
            return Timestamp


class EventValidator:
    """Validates raw event dicts against the spec and wraps them into `Event` envelopes."""

    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        fields: dict[str, Any] = {"event_id": (EventId | None, None)}
        for name, fspec in spec.event.fields.items():
            ann = _annotation(fspec)
            fields[name] = (ann, ...) if fspec.required else (ann | None, None)
        self.model = create_model(  # type: ignore[call-overload]
            f"{spec.event.type}_in",
            __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
            **fields,
        )
        # Validation runs on an equivalent TypedDict: it returns a plain dict (no model instance and no
        # model_dump pass), ~40% cheaper per event; timestamps stay datetimes, which dumps() writes
        # exactly as model_dump(mode="json") did. `model` stays for the OpenAPI schema.
        td_fields: dict[str, Any] = {"event_id": NotRequired[EventId | None]}
        for name, fspec in spec.event.fields.items():
            ann = _annotation(fspec)
            td_fields[name] = ann if fspec.required else NotRequired[ann | None]
        td = TypedDict(f"{spec.event.type}_in", td_fields)  # type: ignore[operator]
        td.__pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[attr-defined]
        self._validate = TypeAdapter(td).validate_python
        self._timestamps = tuple(n for n, f in spec.event.fields.items() if f.type == "timestamp")
        self.time_field = spec.event.time_field
        self.entity_key = spec.entity.key if spec.entity else None
        self.label_spec: LabelSpec = spec.label
        self.fast = FastEvents(spec, GLOBAL_KEY)  # raw JSON events it can vouch for, ~8x faster

    def validate(self, raw: Any) -> dict[str, Any]:
        """Return the normalized fields (JSON-ready) or raise ValidationFailed."""
        try:
            fields = self._validate(raw)
        except ValidationError as exc:
            raise ValidationFailed(validation_errors(exc)) from None
        for name in self._timestamps:  # JSON-ready like model_dump(mode="json"): RFC 3339 UTC with 'Z'
            ts = fields.get(name)
            if ts is not None:
                fields[name] = dumps(ts)[1:-1].decode()
        return {k: v for k, v in fields.items() if v is not None}

    def kafka_key(self, record: dict[str, Any]) -> bytes:
        """Partition key of an `Event` record: its entity, or GLOBAL_KEY without entities."""
        return (record["entity"] if record["entity"] is not None else GLOBAL_KEY).encode()

    def envelope(
        self, fields: dict[str, Any], *, source: str, ingested_at: datetime, event_id: str | None = None
    ) -> dict[str, Any]:
        """The `Event` record as a JSON-ready dict (skips a second model pass on the hot path)."""
        eid = fields.pop("event_id", None) or event_id or new_event_id()
        entity = fields.get(self.entity_key) if self.entity_key else None
        return {
            "event_id": eid,
            "type": self.spec.event.type,
            "schema_version": self.spec.event.schema_version,
            "occurred_at": fields[self.time_field],
            "entity": None if entity is None else str(entity),
            "ingested_at": ingested_at,
            "source": source,
            "data": fields,
        }

    def label(self, raw: Any, *, source: str, now: datetime) -> dict[str, Any]:
        """Validate a label input against the spec's label type; return the `Label` record dict."""
        try:
            inp = LabelIn.model_validate(raw)
        except ValidationError as exc:
            raise ValidationFailed(validation_errors(exc)) from None
        value = self._label_value(inp.value)
        return Label(
            event_id=label_id(inp.event_id),
            occurred_at=inp.observed_at or now,
            target_event_id=inp.event_id,
            value=value,
            entity=inp.entity,
            ingested_at=now,
            source=source,  # type: ignore[arg-type]
        ).model_dump(mode="json")

    def _label_value(self, value: Any) -> bool | int | float | str:
        spec = self.label_spec
        bad = None
        if spec.type == "binary":
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if spec.classes and isinstance(value, str) and value in spec.classes:
                return value == spec.classes[1]  # the second class is the positive one
            named = f", 0/1 or one of {spec.classes}" if spec.classes else " or 0/1"
            bad = f"a binary label must be true/false{named}"
        elif spec.type == "multiclass":
            text = _number_as_text(value)
            if isinstance(text, str) and text in (spec.classes or []):
                return text
            bad = f"a multiclass label must be one of {spec.classes}"
        else:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            bad = "a regression label must be a number"
        raise ValidationFailed([{"field": "value", "reason": bad, "code": "not_allowed_value"}])

    # ---- additions shared by ingest (HTTP and raw bridge), replay and serving

    def check_not_future(self, record: dict[str, Any], *, now: datetime, max_ahead: timedelta) -> None:
        """Refuse (code `future`) an `Event` or `Label` record timed more than `max_ahead` after `now`.

        One far-future event time would otherwise move a partition's stream time ahead of every real
        event and make the join treat everything after it as late."""
        when = record["occurred_at"]
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        if when - now > max_ahead:
            field = "observed_at" if record.get("type") == "label" else self.time_field
            raise ValidationFailed([{
                "field": field, "code": "future",
                "reason": f"{when.isoformat()} is more than {max_ahead.total_seconds():g} s ahead of the "
                          f"receiving service's clock ({now.isoformat()})"}])

    def label_input_schema(self) -> dict[str, Any]:
        """JSON Schema of `LabelIn` with `value` narrowed to what the spec's label type accepts."""
        spec = self.label_spec
        schema = LabelIn.model_json_schema()
        if spec.type == "binary":
            value: dict[str, Any] = {"enum": [True, False, 0, 1], "description": "true/false, or 1/0"}
        elif spec.type == "multiclass":
            value = {"type": "string", "enum": list(spec.classes or []), "description": "one of the classes"}
        else:
            value = {"type": "number", "description": "a number"}
        schema["properties"]["value"] = {"title": "Value", **value,
                                         "description": f"The outcome ({spec.type}): {value['description']}"}
        return schema
