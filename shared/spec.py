"""The pipeline spec (lifecycle stage 1): one YAML file that describes the ML problem.

`load_spec(path)` validates it and reports each error with its YAML path, line and reason.
"""
from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import SpecError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


def parse_duration(value: Any) -> timedelta:
    """'500ms', '10s', '5m', '1h', '7d', '2w', or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError("a duration like '500ms', '10s', '5m', '1h', '7d' or a number of seconds")


def _format_duration(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(_format_duration)]
Name = Annotated[str, Field(pattern=_NAME)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- event schema

FieldType = Literal["string", "int", "float", "bool", "category", "timestamp"]


class FieldSpec(_Strict):
    """One field of the event schema."""

    type: FieldType
    required: bool = True
    description: str = ""
    values: list[str] | None = Field(None, description="Allowed values of a category field")
    min: float | None = Field(None, description="Smallest allowed value of a numeric field")
    max: float | None = Field(None, description="Largest allowed value of a numeric field")
    max_length: int | None = Field(None, ge=1, description="Longest allowed string")

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.type == "category":
            if not self.values:
                raise ValueError("a category field needs a non-empty 'values' list")
            if len(set(self.values)) != len(self.values):
                raise ValueError("'values' has duplicates")
        elif self.values is not None:
            raise ValueError("'values' is only for category fields")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError("'min'/'max' are only for int and float fields")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("'min' is greater than 'max'")
        if self.max_length is not None and self.type != "string":
            raise ValueError("'max_length' is only for string fields")
        return self

    @property
    def numeric(self) -> bool:
        return self.type in ("int", "float")


RESERVED_FIELDS = frozenset({"event_id"})


class EventSchema(_Strict):
    """The shape of one event: its type name, fields and which field holds event time."""

    type: Name = "event"
    schema_version: int = Field(1, ge=1)
    time_field: Name
    fields: dict[Name, FieldSpec]

    @model_validator(mode="after")
    def _time_field(self) -> EventSchema:
        reserved = RESERVED_FIELDS & set(self.fields)
        if reserved:
            raise ValueError(f"field names {sorted(reserved)} are reserved by the event envelope")
        spec = self.fields.get(self.time_field)
        if spec is None:
            raise ValueError(f"time_field '{self.time_field}' is not one of the fields")
        if spec.type != "timestamp" or not spec.required:
            raise ValueError(f"time_field '{self.time_field}' must be a required timestamp field")
        return self


class EntitySpec(_Strict):
    """The entity an event belongs to (user, card, device); features aggregate per entity."""

    key: Name


# ---------------------------------------------------------------- label

class LabelSpec(_Strict):
    """The outcome to predict; it arrives later than the event, at most max_delay later."""

    name: Name
    type: Literal["binary", "multiclass", "regression"]
    classes: list[str] | None = Field(None, description="Class names of a multiclass label")
    max_delay: Duration = Field(description="Longest wait for a label after its event")

    @model_validator(mode="after")
    def _classes(self) -> LabelSpec:
        if self.type == "multiclass" and (not self.classes or len(self.classes) < 3):
            raise ValueError("a multiclass label needs 'classes' with at least 3 names")
        if self.type != "multiclass" and self.classes is not None:
            raise ValueError("'classes' is only for multiclass labels")
        if self.max_delay <= timedelta(0):
            raise ValueError("max_delay must be positive")
        return self


# ---------------------------------------------------------------- features

Aggregation = Literal[
    "count", "sum", "mean", "std", "min", "max", "distinct", "last", "time_since_last", "ratio_to_mean"
]
WINDOWED = frozenset({"count", "sum", "mean", "std", "min", "max", "distinct", "ratio_to_mean"})
NUMERIC_AGGS = frozenset({"sum", "mean", "std", "min", "max", "ratio_to_mean"})


class FeatureSpec(_Strict):
    """One online feature: an aggregation of an entity's past events over a window."""

    name: Name
    agg: Aggregation
    field: Name | None = Field(None, description="Event field aggregated (not for count/time_since_last)")
    window: Duration | None = Field(None, description="Window length (windowed aggregations)")
    kind: Literal["sliding", "tumbling"] = "sliding"

    @model_validator(mode="after")
    def _shape(self) -> FeatureSpec:
        needs_field = self.agg not in ("count", "time_since_last")
        if needs_field and self.field is None:
            raise ValueError(f"'{self.agg}' needs a 'field'")
        if not needs_field and self.field is not None:
            raise ValueError(f"'{self.agg}' takes no 'field'")
        if self.agg in WINDOWED and self.window is None:
            raise ValueError(f"'{self.agg}' needs a 'window'")
        if self.agg not in WINDOWED and self.window is not None:
            raise ValueError(f"'{self.agg}' takes no 'window'")
        if self.window is not None and self.window <= timedelta(0):
            raise ValueError("window must be positive")
        return self


class FeaturesSpec(_Strict):
    """Feature definitions plus how late an event may arrive and still count."""

    allowed_lateness: Duration = timedelta(minutes=5)
    definitions: list[FeatureSpec] = Field(default_factory=list)

    @field_validator("definitions")
    @classmethod
    def _unique(cls, defs: list[FeatureSpec]) -> list[FeatureSpec]:
        names = [d.name for d in defs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature names must be unique; repeated: {dupes}")
        return defs


# ---------------------------------------------------------------- models, training, metrics

ALGORITHMS: dict[str, dict[str, set[str]]] = {
    "river": {
        "logistic_regression": {"binary"},
        "hoeffding_tree": {"binary", "multiclass"},
        "adaptive_random_forest": {"binary", "multiclass"},
        "naive_bayes": {"binary", "multiclass"},
        "linear_regression": {"regression"},
        "hoeffding_tree_regressor": {"regression"},
    },
    "sklearn": {
        "logistic_regression": {"binary", "multiclass"},
        "random_forest": {"binary", "multiclass", "regression"},
        "hist_gradient_boosting": {"binary", "multiclass", "regression"},
        "ridge": {"regression"},
    },
}

METRICS: dict[str, tuple[set[str], bool]] = {
    # name: (tasks it applies to, higher is better)
    "roc_auc": ({"binary"}, True),
    "pr_auc": ({"binary"}, True),
    "log_loss": ({"binary", "multiclass"}, False),
    "accuracy": ({"binary", "multiclass"}, True),
    "f1": ({"binary"}, True),
    "precision": ({"binary"}, True),
    "recall": ({"binary"}, True),
    "macro_f1": ({"multiclass"}, True),
    "mae": ({"regression"}, False),
    "rmse": ({"regression"}, False),
    "r2": ({"regression"}, True),
}


class ModelCandidate(_Strict):
    """A model the trainer fits and compares; algorithms come from a fixed, safe list."""

    name: Name
    library: Literal["river", "sklearn"]
    algorithm: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> ModelCandidate:
        known = ALGORITHMS[self.library]
        if self.algorithm not in known:
            raise ValueError(f"unknown {self.library} algorithm '{self.algorithm}'; one of {sorted(known)}")
        return self


class TriggerSpec(_Strict):
    """When batch models are retrained (river models learn from every labelled example)."""

    every_n_labels: int | None = Field(None, ge=1)
    schedule: Duration | None = None
    on_drift: bool = True


class TrainingSpec(_Strict):
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Latest share of examples held out")
    min_examples: int = Field(500, ge=10)
    max_examples: int = Field(200_000, ge=100)
    triggers: TriggerSpec = Field(default_factory=TriggerSpec)


class MetricsSpec(_Strict):
    """Primary metric gates promotion: a challenger must reach `minimum` and beat the champion by `margin`."""

    primary: str
    minimum: float | None = None
    margin: float = Field(0.0, ge=0)
    report: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- monitoring

class DriftSpec(_Strict):
    method: Literal["psi", "ks", "chi2"] = "psi"
    threshold: float = Field(0.2, gt=0)
    reference_size: int = Field(5000, ge=100)
    window_size: int = Field(2000, ge=100)


class ConceptDriftSpec(_Strict):
    detector: Literal["adwin", "page_hinkley", "kswin"] = "adwin"
    delta: float = Field(0.002, gt=0, lt=1)


class MonitoringSpec(_Strict):
    data_drift: DriftSpec = Field(default_factory=DriftSpec)
    prediction_drift: DriftSpec = Field(default_factory=DriftSpec)
    concept_drift: ConceptDriftSpec = Field(default_factory=ConceptDriftSpec)
    performance_window: int = Field(1000, ge=50, description="Labelled predictions per live metric")
    segments: list[Name] = Field(default_factory=list, description="Category fields to compare for bias")
    max_segment_gap: float = Field(0.1, gt=0, description="Largest tolerated primary-metric gap")
    skew_threshold: float = Field(1e-6, ge=0, description="Train/serve feature mismatch tolerance")


# ---------------------------------------------------------------- the spec

class PipelineSpec(_Strict):
    """The whole problem definition; cross-field rules are checked here."""

    name: Name
    description: str = ""
    entity: EntitySpec | None = None
    event: EventSchema
    label: LabelSpec
    features: FeaturesSpec = Field(default_factory=FeaturesSpec)
    models: list[ModelCandidate] = Field(default_factory=list)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    metrics: MetricsSpec
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineSpec:
        fields = self.event.fields
        if self.entity is not None:
            key = fields.get(self.entity.key)
            if key is None:
                raise _at(("entity", "key"), f"'{self.entity.key}' is not an event field")
            if key.type not in ("string", "int", "category") or not key.required:
                raise _at(("entity", "key"), "the entity key must be a required string, int or category field")
        if self.label.name in fields:
            raise _at(("label", "name"), f"'{self.label.name}' is also an event field; labels arrive separately")
        for i, feat in enumerate(self.features.definitions):
            where = ("features", "definitions", i)
            if feat.name in fields:
                raise _at((*where, "name"), f"'{feat.name}' clashes with an event field")
            if feat.field is not None:
                src = fields.get(feat.field)
                if src is None:
                    raise _at((*where, "field"), f"'{feat.field}' is not an event field")
                if feat.agg in NUMERIC_AGGS and not src.numeric:
                    raise _at((*where, "field"), f"'{feat.agg}' needs a numeric field; '{feat.field}' is {src.type}")
                if feat.agg == "last" and src.type == "string":
                    raise _at((*where, "field"), "'last' of a string field is not a number; use a category field")
                if feat.agg == "distinct" and src.type not in ("string", "category", "int", "bool"):
                    raise _at((*where, "field"), f"'distinct' needs a discrete field; '{feat.field}' is {src.type}")
        for i, model in enumerate(self.models):
            if self.label.type not in ALGORITHMS[model.library][model.algorithm]:
                raise _at(("models", i, "algorithm"), f"'{model.algorithm}' does not fit a {self.label.type} label")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise _at(("models",), "model names must be unique")
        for path, metric in [(("metrics", "primary"), self.metrics.primary)] + [
            (("metrics", "report", i), m) for i, m in enumerate(self.metrics.report)
        ]:
            if metric not in METRICS:
                raise _at(path, f"unknown metric '{metric}'; one of {sorted(METRICS)}")
            if self.label.type not in METRICS[metric][0]:
                raise _at(path, f"'{metric}' does not apply to a {self.label.type} label")
        for i, seg in enumerate(self.monitoring.segments):
            src = fields.get(seg)
            if src is None or src.type not in ("category", "bool"):
                raise _at(("monitoring", "segments", i), f"'{seg}' must be a category or bool event field")
        return self

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metrics.primary][1]

    def feature_hash(self) -> str:
        """Digest of the feature definitions, recorded in each model's lineage."""
        payload = self.features.model_dump_json().encode()
        return hashlib.sha256(payload).hexdigest()[:16]


class _LocatedError(ValueError):
    def __init__(self, loc: tuple, reason: str):
        self.loc = loc
        super().__init__(reason)


def _at(loc: tuple, reason: str) -> _LocatedError:
    return _LocatedError(loc, reason)


# ---------------------------------------------------------------- loading

def _yaml_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """Line (1-based) of the deepest YAML node that the error location reaches."""
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def spec_errors(exc: ValidationError, root: yaml.Node | None = None) -> list[str]:
    """Turn a pydantic error into 'path (line N): reason' strings."""
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        reason = err["msg"].removeprefix("Value error, ")
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _LocatedError):
            loc, reason = loc + ctx_err.loc, str(ctx_err)
        line = _line_of(root, loc)
        out.append(f"{_yaml_path(loc)}{f' (line {line})' if line else ''}: {reason}")
    return out


def parse_spec(text: str, source: str = "<spec>") -> PipelineSpec:
    """Validate spec YAML text; raises SpecError listing every problem with its path and line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a YAML mapping")
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        lines = "\n  ".join(spec_errors(exc, root))
        raise SpecError(f"{source}: invalid pipeline spec:\n  {lines}") from None


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate a spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc.strerror}") from None
    return parse_spec(text, str(path))
