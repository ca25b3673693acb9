"""The pipeline spec: the example validates; mistakes are reported with YAML path, line and reason."""
from datetime import timedelta
from pathlib import Path

import pytest

from shared.errors import SpecError
from shared.spec import load_spec, parse_duration, parse_spec

EXAMPLE = Path("examples/fraud/pipeline.yaml")
TEXT = EXAMPLE.read_text()


def test_example_spec_is_valid():
    spec = load_spec(EXAMPLE)
    assert spec.name == "fraud"
    assert spec.entity.key == "user_id"
    assert spec.event.time_field == "ts"
    assert spec.label.max_delay == timedelta(days=7)
    assert [f.name for f in spec.features.definitions][:3] == ["txn_count_10m", "txn_count_1h", "amount_sum_1h"]
    assert spec.higher_is_better is True
    assert len(spec.feature_hash()) == 16


@pytest.mark.parametrize("text, expected", [
    ("1h", timedelta(hours=1)), ("500ms", timedelta(milliseconds=500)), ("7d", timedelta(days=7)),
    (90, timedelta(seconds=90)), ("2w", timedelta(weeks=2)), ("1.5m", timedelta(seconds=90)),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["7 days", "", "1y", True, None])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("old, new, message", [
    ("agg: max, field: amount", "agg: max, field: channel",
     "features.definitions[5].field (line 36): 'max' needs a numeric field; 'channel' is category"),
    ("primary: roc_auc", "primary: mae", "metrics.primary (line 56): 'mae' does not apply to a binary label"),
    ("max_delay: 7d", "max_delay: 7 days", "label.max_delay (line 26): a duration like"),
    ("  key: user_id", "  key: nope", "entity.key (line 7): 'nope' is not an event field"),
    ("time_field: ts", "time_field: amount", "time_field 'amount' must be a required timestamp field"),
    ("algorithm: hist_gradient_boosting", "algorithm: xgboost", "models[1] (line 47): unknown sklearn algorithm"),
    ("segments: [country, channel]", "segments: [country, amount]",
     "monitoring.segments[1] (line 66): 'amount' must be a category or bool event field"),
    ("channel: {type: category, values: [pos, web, app]}", "channel: {type: category}",
     "event.fields.channel (line 20): a category field needs a non-empty 'values' list"),
    ("    - {name: last_amount, agg: last, field: amount}", "    - {name: last_amount, agg: last, field: amount, window: 1h}",
     "'last' takes no 'window'"),
    ("name: fraud\n", "name: fraud\ncolour: blue\n", "colour (line 4): Extra inputs are not permitted"),
])
def test_errors_name_path_line_and_reason(old, new, message):
    assert old in TEXT
    with pytest.raises(SpecError) as err:
        parse_spec(TEXT.replace(old, new, 1), "p.yaml")
    assert message in str(err.value)


def test_every_error_is_listed():
    text = TEXT.replace("primary: roc_auc", "primary: 3").replace("fraud_rate", "x").replace("type: binary", "type: binaryy")
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    assert "label.type" in str(err.value)


def test_duplicate_feature_names_rejected():
    text = TEXT.replace("name: txn_count_1h,", "name: txn_count_10m,")
    with pytest.raises(SpecError, match=r"features.definitions .*repeated: \['txn_count_10m'\]"):
        parse_spec(text)


def test_not_yaml_and_missing_file():
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_spec("name: [unclosed")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec("/nonexistent/spec.yaml")


def test_spec_without_entity_is_valid():
    text = TEXT.replace("entity:\n  key: user_id\n", "")
    assert parse_spec(text).entity is None
