"""The pipeline spec (lifecycle stage 1): one YAML file that describes the ML problem.

`load_spec(path)` validates it and reports every error at once, each with its YAML path, line
and reason; `python -m shared.spec check FILE...` does the same from the shell.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import math
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
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

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

# PyYAML (YAML 1.1) reads unquoted yes/no/on/off/true/false, in any case, as booleans: `NO` (Norway)
# in a country list arrives as False. Errors about such a value name the rule.
BOOL_HINT = "YAML reads unquoted yes/no/on/off/true/false as booleans: quote it"


def number_text(value: int | float) -> str:
    """The canonical text of a number used as a category value or class: 1, 1.0 -> '1'; 2.5 -> '2.5'."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a category value must be a finite number or a text")
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def reads_as_number(text: str) -> bool:
    """Whether a number sent in an event can match this value (it is some number's canonical text)."""
    for parse in (int, float):
        try:
            if number_text(parse(text)) == text:
                return True
        except (ValueError, OverflowError):
            pass
    return False


def _value_text(value: Any) -> Any:
    # Category values and classes are text; YAML makes `[0, 1, 2]` numbers, and events may send
    # numbers too, so both sides compare canonical text.
    if isinstance(value, bool):
        raise PydanticCustomError("yaml_bool", BOOL_HINT)
    if isinstance(value, (int, float)):
        return number_text(value)
    return value


ValueText = Annotated[str, BeforeValidator(_value_text)]


def _duplicates(items: list[str]) -> list[str]:
    return sorted({v for v in items if items.count(v) > 1})


class _Problems(ValueError):
    """Several problems, each at a location relative to where the validator runs."""

    def __init__(self, problems: list[tuple[tuple, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{_yaml_path(loc)}: {why}" if loc else why for loc, why in problems))


def _raise_any(problems: list[tuple[tuple, str]]) -> None:
    if problems:
        raise _Problems(problems)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- event schema

FieldType = Literal["string", "int", "float", "bool", "category", "timestamp"]


class FieldSpec(_Strict):
    """One field of the event schema."""

    type: FieldType
    required: bool = True
    description: str = ""
    values: list[ValueText] | None = Field(
        None, description="Allowed values of a category field; numbers are kept as text (1 -> '1')"
    )
    min: float | None = Field(None, description="Smallest allowed value of a numeric field")
    max: float | None = Field(None, description="Largest allowed value of a numeric field")
    max_length: int | None = Field(None, ge=1, description="Longest allowed string")

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        problems: list[tuple[tuple, str]] = []
        if self.type == "category":
            if not self.values:
                problems.append(((), "a category field needs a non-empty 'values' list"))
            elif dupes := _duplicates(self.values):
                problems.append(((), f"'values' has duplicates (numbers count as their text): {dupes}"))
        elif self.values is not None:
            problems.append(((), "'values' is only for category fields"))
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            problems.append(((), "'min'/'max' are only for int and float fields"))
        if self.min is not None and self.max is not None and self.min > self.max:
            problems.append(((), "'min' is greater than 'max'"))
        if self.max_length is not None and self.type != "string":
            problems.append(((), "'max_length' is only for string fields"))
        _raise_any(problems)
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
        problems: list[tuple[tuple, str]] = []
        for name in sorted(RESERVED_FIELDS & set(self.fields)):
            problems.append((("fields", name), f"field name '{name}' is reserved by the event envelope"))
        spec = self.fields.get(self.time_field)
        if spec is None:
            problems.append((("time_field",), f"time_field '{self.time_field}' is not one of the fields"))
        elif spec.type != "timestamp" or not spec.required:
            reason = f"time_field '{self.time_field}' must be a required timestamp field"
            problems.append((("time_field",), reason))
        _raise_any(problems)
        return self


class EntitySpec(_Strict):
    """The entity an event belongs to (user, card, device); features aggregate per entity."""

    key: Name


# ---------------------------------------------------------------- label

# A binary label's value is a bool; these class names would contradict true/false and 0/1.
_BOOL_WORDS = frozenset({"0", "1", "true", "false"})


class LabelSpec(_Strict):
    """The outcome to predict; it arrives later than the event, at most max_delay later."""

    name: Name
    type: Literal["binary", "multiclass", "regression"]
    classes: list[ValueText] | None = Field(
        None,
        description="Class names: at least 3 for a multiclass label; optionally 2 for a binary label "
        "(negative first, positive second, e.g. [declined, approved]); numbers are kept as text",
    )
    max_delay: Duration = Field(description="Longest wait for a label after its event")

    @model_validator(mode="after")
    def _classes(self) -> LabelSpec:
        problems: list[tuple[tuple, str]] = []
        classes, at = self.classes, ("classes",)
        if self.type == "multiclass" and (not classes or len(classes) < 3):
            problems.append((at, "a multiclass label needs 'classes' with at least 3 names"))
        if self.type == "binary" and classes is not None:
            if len(classes) != 2:
                problems.append((at, "a binary label takes exactly 2 'classes' (negative, positive) or none"))
            elif bad := [c for c in classes if c.lower() in _BOOL_WORDS]:
                problems.append((at, f"binary classes {bad} already mean false/true; leave 'classes' out"))
        if self.type == "regression" and classes is not None:
            problems.append((at, "'classes' is not for regression labels"))
        if classes and (dupes := _duplicates(classes)):
            problems.append((at, f"'classes' has duplicates (numbers count as their text): {dupes}"))
        if self.max_delay <= timedelta(0):
            problems.append((("max_delay",), "max_delay must be positive"))
        _raise_any(problems)
        return self


# ---------------------------------------------------------------- features

Aggregation = Literal[
    "count", "sum", "mean", "std", "min", "max", "distinct", "last", "time_since_last", "ratio_to_mean"
]
WINDOWED = frozenset({"count", "sum", "mean", "std", "min", "max", "distinct", "ratio_to_mean"})
NUMERIC_AGGS = frozenset({"sum", "mean", "std", "min", "max", "ratio_to_mean"})
BOOL_AGGS = frozenset({"sum", "mean"})  # of a bool field: how many were true, and the share that was


class FeatureSpec(_Strict):
    """One online feature: an aggregation of an entity's past events over a window."""

    name: Name
    agg: Aggregation
    field: Name | None = Field(None, description="Event field aggregated (not for count/time_since_last)")
    window: Duration | None = Field(None, description="Window length (windowed aggregations)")
    kind: Literal["sliding", "tumbling"] = "sliding"

    @model_validator(mode="after")
    def _shape(self) -> FeatureSpec:
        problems: list[tuple[tuple, str]] = []
        needs_field = self.agg not in ("count", "time_since_last")
        if needs_field and self.field is None:
            problems.append(((), f"'{self.agg}' needs a 'field'"))
        if not needs_field and self.field is not None:
            problems.append(((), f"'{self.agg}' takes no 'field'"))
        if self.agg in WINDOWED and self.window is None:
            problems.append(((), f"'{self.agg}' needs a 'window'"))
        if self.agg not in WINDOWED and self.window is not None:
            problems.append(((), f"'{self.agg}' takes no 'window'"))
        if self.window is not None and self.window <= timedelta(0):
            problems.append(((), "window must be positive"))
        _raise_any(problems)
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

_CLASSIFY = ("binary", "multiclass")
# library -> algorithm -> {label type it fits: the class it maps to}. The keys of the inner dict are
# the label types; the dotted names are what the trainer instantiates (never a name from the spec).
ALGORITHMS: dict[str, dict[str, dict[str, str]]] = {
    "river": {
        "logistic_regression": {"binary": "river.linear_model.LogisticRegression"},
        "hoeffding_tree": dict.fromkeys(_CLASSIFY, "river.tree.HoeffdingTreeClassifier"),
        # Drift-adaptive: they replace a branch or a tree member when its error stream drifts.
        "adaptive_hoeffding_tree": dict.fromkeys(_CLASSIFY, "river.tree.HoeffdingAdaptiveTreeClassifier"),
        "adaptive_random_forest": dict.fromkeys(_CLASSIFY, "river.forest.ARFClassifier"),
        "naive_bayes": dict.fromkeys(_CLASSIFY, "river.naive_bayes.GaussianNB"),
        "linear_regression": {"regression": "river.linear_model.LinearRegression"},
        "hoeffding_tree_regressor": {"regression": "river.tree.HoeffdingTreeRegressor"},
        "adaptive_hoeffding_tree_regressor": {"regression": "river.tree.HoeffdingAdaptiveTreeRegressor"},
        "adaptive_random_forest_regressor": {"regression": "river.forest.ARFRegressor"},
    },
    "sklearn": {
        "logistic_regression": dict.fromkeys(_CLASSIFY, "sklearn.linear_model.LogisticRegression"),
        "random_forest": {
            **dict.fromkeys(_CLASSIFY, "sklearn.ensemble.RandomForestClassifier"),
            "regression": "sklearn.ensemble.RandomForestRegressor",
        },
        "hist_gradient_boosting": {
            **dict.fromkeys(_CLASSIFY, "sklearn.ensemble.HistGradientBoostingClassifier"),
            "regression": "sklearn.ensemble.HistGradientBoostingRegressor",
        },
        "ridge": {"regression": "sklearn.linear_model.Ridge"},
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
# Values a metric can take; a `minimum` outside them is a mistake (e.g. a negative bound for a loss).
METRIC_RANGE: dict[str, tuple[float, float]] = {
    **dict.fromkeys(("roc_auc", "pr_auc", "accuracy", "f1", "precision", "recall", "macro_f1"), (0.0, 1.0)),
    **dict.fromkeys(("log_loss", "mae", "rmse"), (0.0, math.inf)),
    "r2": (-math.inf, 1.0),
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
    minimum: float | None = Field(
        None,
        description="Bound a challenger's primary metric must reach: the lowest acceptable value where "
        "higher is better (roc_auc, accuracy, r2, ...), and an upper bound, the highest acceptable value, "
        "for a loss where lower is better (log_loss, mae, rmse)",
    )
    margin: float = Field(0.0, ge=0)
    report: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- monitoring

class DriftSpec(_Strict):
    """Live windows against the champion's reference statistics. Every window computes PSI for every
    input and the two-sample test that suits its type (Kolmogorov-Smirnov for numbers, chi-square for
    categories); `method` picks what an alert compares with `threshold`: psi, the population stability
    index (alert at or above it); ks or chi2, the type's test (alert when its p-value is below it)."""

    method: Literal["psi", "ks", "chi2"] = "psi"
    threshold: float | None = Field(None, gt=0, description="Default: 0.2 for psi, a p-value of 0.01 for the tests")
    reference_size: int = Field(5000, ge=100, description=(
        "data_drift: a batch version's reference statistics describe the latest this-many rows of its "
        "training part (time order), the baseline the monitor compares live windows with"))
    window_size: int = Field(2000, ge=100, description="Predictions per live window (tumbling)")

    @property
    def limit(self) -> float:
        return self.threshold if self.threshold is not None else (0.2 if self.method == "psi" else 0.01)


class ConceptDriftSpec(_Strict):
    detector: Literal["adwin", "page_hinkley", "kswin"] = "adwin"
    delta: float = Field(0.002, gt=0, lt=1)


class ServingSpec(_Strict):
    """How serving turns scores into decisions and splits traffic between model versions."""

    threshold: float = Field(0.5, ge=0, le=1, description="A binary score at or above it is a positive decision")
    canary_share: float = Field(
        0.0, ge=0, le=1, description="Share of entities (sticky by entity) the challenger version serves; "
                                     "versions in stage shadow score every request, logged only")


class MonitoringSpec(_Strict):
    data_drift: DriftSpec = Field(default_factory=DriftSpec)
    prediction_drift: DriftSpec = Field(default_factory=DriftSpec)
    concept_drift: ConceptDriftSpec = Field(default_factory=ConceptDriftSpec)
    performance_window: int = Field(1000, ge=50, description="Labelled predictions per live metric")
    segments: list[Name] = Field(default_factory=list, description="Category fields to compare for bias")
    bias_bounds: tuple[float, float] = Field(
        (0.8, 1.25), description="A segment's positive rate and error rates divided by the best segment's must stay "
                                 "within these bounds (the four-fifths rule)")
    max_segment_gap: float = Field(0.1, gt=0, description="Largest tolerated error-rate gap (absolute) between a "
                                                          "segment and the best one")
    min_segment_size: int = Field(50, ge=1, description="Labelled predictions a segment needs in a window to be judged")
    skew_threshold: float = Field(1e-6, ge=0, description="Train/serve feature mismatch tolerance (relative)")
    hysteresis: float = Field(0.8, gt=0, lt=1, description=(
        "A firing alert resolves only once its statistic is back past threshold × hysteresis (for a p-value: "
        "threshold / hysteresis; for a minimum: the value it must reach again), so a value hovering at the "
        "threshold does not flap"))

    @model_validator(mode="after")
    def _bounds(self) -> MonitoringSpec:
        low, high = self.bias_bounds
        if not 0 < low <= 1 <= high:
            raise ValueError("bias_bounds must be [low, high] with 0 < low <= 1 <= high")
        return self


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
    serving: ServingSpec = Field(default_factory=ServingSpec)

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineSpec:
        _raise_any(cross_problems(dict(self)))
        return self

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metrics.primary][1]

    def feature_hash(self) -> str:
        """Digest of the feature definitions, recorded in each model's lineage."""
        payload = self.features.model_dump_json().encode()
        return hashlib.sha256(payload).hexdigest()[:16]


def _agg_misfit(feat: FeatureSpec, src: FieldSpec) -> str | None:
    """Why an aggregation does not apply to the field's type, or None when it does."""
    of = f"'{feat.field}' is {src.type}"
    if feat.agg in NUMERIC_AGGS and not (src.numeric or (src.type == "bool" and feat.agg in BOOL_AGGS)):
        return f"'{feat.agg}' needs a numeric field; {of}"
    if feat.agg == "last" and src.type == "string":
        return "'last' of a string field is not a number; use a category field"
    if feat.agg == "distinct" and src.type not in ("string", "category", "int", "bool"):
        return f"'distinct' needs a discrete field; {of}"
    return None


def cross_problems(sections: dict[str, Any]) -> list[tuple[tuple, str]]:
    """Every problem between spec sections, as (loc, reason).

    `sections` maps a top-level key to its validated value; a section that did not validate is
    absent, and the checks that read it are skipped (its own errors are reported already).
    """
    out: list[tuple[tuple, str]] = []
    event, label, entity = sections.get("event"), sections.get("label"), sections.get("entity")
    fields = event.fields if event is not None else None
    if fields is not None and entity is not None:
        key = fields.get(entity.key)
        if key is None:
            out.append((("entity", "key"), f"'{entity.key}' is not an event field"))
        elif key.type not in ("string", "int", "category") or not key.required:
            out.append((("entity", "key"), "the entity key must be a required string, int or category field"))
    if fields is not None and label is not None and label.name in fields:
        out.append((("label", "name"), f"'{label.name}' is also an event field; labels arrive separately"))
    if fields is not None and "features" in sections:
        for i, feat in enumerate(sections["features"].definitions):
            where = ("features", "definitions", i)
            if feat.name in fields:
                out.append(((*where, "name"), f"'{feat.name}' clashes with an event field"))
            if feat.field is not None:
                src = fields.get(feat.field)
                reason = f"'{feat.field}' is not an event field" if src is None else _agg_misfit(feat, src)
                if reason:
                    out.append(((*where, "field"), reason))
    models = sections.get("models", [])
    for i, model in enumerate(models):
        if label is not None and label.type not in ALGORITHMS[model.library][model.algorithm]:
            out.append((("models", i, "algorithm"), f"'{model.algorithm}' does not fit a {label.type} label"))
        if model.name in (m.name for m in models[:i]):
            out.append((("models", i, "name"), f"model name '{model.name}' is used twice"))
    if (metrics := sections.get("metrics")) is not None:
        named = [(("metrics", "primary"), metrics.primary)]
        named += [(("metrics", "report", i), m) for i, m in enumerate(metrics.report)]
        for path, metric in named:
            if metric not in METRICS:
                out.append((path, f"unknown metric '{metric}'; one of {sorted(METRICS)}"))
            elif label is not None and label.type not in METRICS[metric][0]:
                out.append((path, f"'{metric}' does not apply to a {label.type} label"))
        low, high = METRIC_RANGE.get(metrics.primary, (-math.inf, math.inf))
        if metrics.minimum is not None and not low <= metrics.minimum <= high:
            reason = (f"a bound for '{metrics.primary}' cannot be negative" if high == math.inf
                      else f"'{metrics.primary}' is at most {high:g}" if low == -math.inf
                      else f"'{metrics.primary}' lies in [{low:g}, {high:g}]")
            out.append((("metrics", "minimum"), reason))
    if fields is not None and "monitoring" in sections:
        for i, seg in enumerate(sections["monitoring"].segments):
            src = fields.get(seg)
            if src is None or src.type not in ("category", "bool"):
                out.append((("monitoring", "segments", i), f"'{seg}' must be a category or bool event field"))
    return out


# ---------------------------------------------------------------- loading

def _yaml_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        index = isinstance(part, int) and not isinstance(part, bool)
        out += f"[{part}]" if index else (f".{part}" if out else str(part))
    return out or "<root>"


def _node_at(node: yaml.Node | None, loc: tuple) -> tuple[yaml.Node | None, bool]:
    """The deepest YAML node the error location reaches, and whether it reaches all of it."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        else:
            child = None
        if child is None:
            return node, False
        node = child
    return node, True


def _problems_of(exc: ValidationError, root: yaml.Node | None, prefix: tuple = ()) -> list[tuple[tuple, str]]:
    """A pydantic error as (loc, reason) pairs; locs start with `prefix`."""
    out = []
    for err in exc.errors():
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _Problems):
            out += [(loc + sub, reason) for sub, reason in ctx_err.problems]
            continue
        reason = err["msg"].removeprefix("Value error, ")
        word = None
        if loc and loc[-1] == "[key]":  # a mapping key failed (`yes:` read as True): name it as written
            word = _key_text(_node_at(root, loc[:-2])[0], err["input"])  # loc holds True as 1
            loc = loc[:-2] + (loc[-2] if word is None else word,)
            reason = f"key: {reason}"
        if isinstance(err.get("input"), bool) and err["type"] in ("string_type", "yaml_bool"):
            node, whole = _node_at(root, loc)
            if word is None:
                word = node.value if whole and isinstance(node, yaml.ScalarNode) else "no"
            hint = f"{BOOL_HINT}, e.g. '{word}'"
            reason = hint if err["type"] == "yaml_bool" else f"{reason}; {hint}"
        out.append((loc, reason))
    return out


def _key_text(mapping: yaml.Node | None, key: Any) -> str | None:
    """How a mapping key that YAML turned into a bool or number is written in the file."""
    if isinstance(mapping, yaml.MappingNode):
        for k, _ in mapping.value:
            if isinstance(k, yaml.ScalarNode) and type(value := yaml.safe_load(k.value)) is type(key) and value == key:
                return k.value
    return None


def _format(problems: list[tuple[tuple, str]], root: yaml.Node | None) -> list[str]:
    """'path (line N): reason' lines in the order of the file, so they read top to bottom."""
    out = []
    for loc, reason in problems:
        node, _ = _node_at(root, loc)
        line = node.start_mark.line + 1 if node is not None else 0
        out.append((line, f"{_yaml_path(loc)}{f' (line {line})' if line else ''}: {reason}"))
    return [text for _, text in sorted(out, key=lambda item: item[0])]


def spec_errors(exc: ValidationError, root: yaml.Node | None = None) -> list[str]:
    """Turn a pydantic error into 'path (line N): reason' strings."""
    return _format(_problems_of(exc, root), root)


@functools.cache
def _section_adapter(name: str) -> TypeAdapter:
    """A validator of one top-level section, with the same type and constraints as in PipelineSpec."""
    info = PipelineSpec.model_fields[name]
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)


def _all_problems(data: dict, root: yaml.Node | None) -> list[tuple[tuple, str]]:
    """Every problem of a spec that failed validation: each section's own errors, then the cross
    checks between the sections that validated (pydantic stops before cross checks on any error)."""
    problems: list[tuple[tuple, str]] = []
    sections: dict[str, Any] = {}
    for name, info in PipelineSpec.model_fields.items():
        if name not in data:
            if info.is_required():
                problems.append(((name,), "Field required"))
            else:
                sections[name] = info.get_default(call_default_factory=True)
            continue
        try:
            sections[name] = _section_adapter(name).validate_python(data[name])
        except ValidationError as exc:
            problems += _problems_of(exc, root, (name,))
    extra = [key for key in data if key not in PipelineSpec.model_fields]
    problems += [((key,), "Extra inputs are not permitted") for key in extra]
    return problems + cross_problems(sections)


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
        errors = _format(_all_problems(data, root), root) or spec_errors(exc, root)
        lines = "\n  ".join(errors)
        raise SpecError(f"{source}: invalid pipeline spec:\n  {lines}", errors) from None


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate a spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc.strerror}") from None
    return parse_spec(text, str(path))


def main(argv: list[str] | None = None) -> int:
    """`python -m shared.spec check FILE...`: print 'ok' or every error of each spec; exit 1 on any error."""
    parser = argparse.ArgumentParser(prog="python -m shared.spec", description="Pipeline spec tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate spec files; print every error with its path and line")
    check.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)
    failed = 0
    for file in args.files:
        try:
            spec = load_spec(file)
        except SpecError as exc:
            failed += 1
            print(exc)
            continue
        counts = f"{len(spec.features.definitions)} features, {len(spec.models)} models"
        print(f"{file}: ok ({spec.name}, {counts})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
