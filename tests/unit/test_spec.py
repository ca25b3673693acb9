"""The pipeline spec: the example validates; mistakes are reported with YAML path, line and reason."""
import re
from datetime import timedelta
from pathlib import Path

import pytest

from shared.errors import SpecError
from shared.spec import load_spec, parse_duration, parse_spec
from tests.data import FRAUD_PATH as EXAMPLE, FRAUD_TEXT as TEXT, fraud_text


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
    assert parse_spec(fraud_text(entity=False)).entity is None


# ---------------------------------------------------------------- every error in one run (issue 9, item 9)

def test_independent_mistakes_are_all_reported_in_one_run():
    text = (TEXT
            .replace("  key: user_id", "  key: nope")                                        # cross: entity
            .replace("agg: max, field: amount", "agg: max, field: channel")                   # cross: feature
            .replace("agg: distinct, field: country", "agg: distinct, field: countryy")       # cross: feature
            .replace("algorithm: hist_gradient_boosting", "algorithm: xgboost")               # field: models
            .replace("primary: roc_auc", "primary: mae")                                      # cross: metrics
            .replace("holdout_fraction: 0.2", "holdout_fraction: 1.5")                        # field: training
            .replace("method: psi, threshold: 0.2, reference", "method: psy, threshold: 0.2, reference")
            + "colour: blue\n")                                                               # field: root
    with pytest.raises(SpecError) as err:
        parse_spec(text, "p.yaml")
    expected = [
        "entity.key (line 7): 'nope' is not an event field",
        "features.definitions[5].field (line 36): 'max' needs a numeric field; 'channel' is category",
        "features.definitions[9].field (line 40): 'countryy' is not an event field",
        "models[1] (line 47): unknown sklearn algorithm 'xgboost'",
        "metrics.primary (line 56): 'mae' does not apply to a binary label",
        "training.holdout_fraction (line 51): Input should be less than 1",
        "monitoring.data_drift.method (line 62): Input should be 'psi', 'ks' or 'chi2'",
        "colour (line 68): Extra inputs are not permitted",
    ]
    for message in expected:
        assert message in str(err.value)
    assert len(err.value.errors) == len(expected), err.value.errors


def test_cross_checks_collect_every_problem_also_in_direct_validation():
    import yaml
    from pydantic import ValidationError
    from shared.spec import PipelineSpec
    data = yaml.safe_load(TEXT.replace("name: is_fraud", "name: amount")
                          .replace("name: gbm,", "name: online_logreg,")
                          .replace("segments: [country, channel]", "segments: [country, ts]"))
    with pytest.raises(ValidationError) as err:
        PipelineSpec.model_validate(data)
    message = str(err.value)
    assert "'amount' is also an event field" in message
    assert "'online_logreg' is used twice" in message
    assert "'ts' must be a category or bool event field" in message


def test_check_command_prints_ok_or_every_error(tmp_path, capsys):
    from shared.spec import main
    bad = tmp_path / "bad.yaml"
    bad.write_text(TEXT.replace("  key: user_id", "  key: nope").replace("primary: roc_auc", "primary: mae"))
    assert main(["check", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == f"{EXAMPLE}: ok (fraud, 13 features, 3 models)\n"
    assert main(["check", str(EXAMPLE), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{EXAMPLE}: ok" in out
    assert f"{bad} (line 7): 'nope'" not in out and "entity.key (line 7): 'nope' is not an event field" in out
    assert "metrics.primary (line 56): 'mae' does not apply to a binary label" in out


def test_check_command_runs_as_a_module(tmp_path):
    import subprocess
    import sys
    missing = tmp_path / "missing.yaml"
    run = subprocess.run([sys.executable, "-m", "shared.spec", "check", str(EXAMPLE), str(missing)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert "ok (fraud, 13 features, 3 models)" in run.stdout and "cannot read the spec" in run.stdout


# ---------------------------------------------------------------- YAML traps (item 10)

def with_channel_values(values: str) -> str:
    return TEXT.replace("channel: {type: category, values: [pos, web, app]}", f"channel: {{type: category, values: {values}}}")


def test_category_values_written_as_numbers_are_stored_as_text():
    spec = parse_spec(with_channel_values("[0, 1, 2.5, 3.0, '4']"))
    assert spec.event.fields["channel"].values == ["0", "1", "2.5", "3", "4"]


def test_category_values_that_collide_as_text_are_refused():
    with pytest.raises(SpecError, match=r"event.fields.channel \(line 20\): 'values' has duplicates.*\['1'\]"):
        parse_spec(with_channel_values("[1, '1', 2]"))


@pytest.mark.parametrize("values, word", [("[DE, FR, NO]", "NO"), ("[yes, no, maybe]", "yes"), ("[on, off]", "on")])
def test_yaml_booleans_among_values_get_the_quoting_hint(values, word):
    with pytest.raises(SpecError) as err:
        parse_spec(with_channel_values(values))
    assert "event.fields.channel.values[" in str(err.value)
    assert "(line 20)" in str(err.value)
    assert f"YAML reads unquoted yes/no/on/off/true/false as booleans: quote it, e.g. '{word}'" in str(err.value)


def test_a_boolean_where_a_name_belongs_gets_the_quoting_hint():
    with pytest.raises(SpecError) as err:
        parse_spec(TEXT.replace("name: is_fraud", "name: no"))
    assert "label.name (line 24): Input should be a valid string; YAML reads unquoted" in str(err.value)
    assert "e.g. 'no'" in str(err.value)


def test_a_boolean_key_is_named_as_written_with_the_quoting_hint():
    with pytest.raises(SpecError) as err:
        parse_spec(TEXT.replace("    ts: {type: timestamp}", "    ts: {type: timestamp}\n    on: {type: bool}"))
    assert "event.fields.on (line 22): key: Input should be a valid string; YAML reads unquoted" in str(err.value)
    assert "e.g. 'on'" in str(err.value)


def test_multiclass_classes_written_as_numbers():
    assert parse_spec(fraud_text(label="multiclass", classes="[0, 1, 2]")).label.classes == ["0", "1", "2"]


def test_binary_label_with_named_classes():
    assert parse_spec(fraud_text(classes="[declined, approved]")).label.classes == ["declined", "approved"]


@pytest.mark.parametrize("classes, reason", [
    ("[a, b, c]", "a binary label takes exactly 2 'classes'"),
    ("[a]", "a binary label takes exactly 2 'classes'"),
    ("[0, 1]", "binary classes ['0', '1'] already mean false/true"),
    ("[approved, approved]", "'classes' has duplicates"),
])
def test_binary_classes_mistakes(classes, reason):
    with pytest.raises(SpecError, match=r"label.classes \(line 26\): " + re.escape(reason)):
        parse_spec(fraud_text(classes=classes))


def test_multiclass_still_needs_three_classes():
    with pytest.raises(SpecError, match="at least 3"):
        parse_spec(fraud_text(label="multiclass", classes="[a, b]"))


# ---------------------------------------------------------------- feature language, models, metrics (item 11)

def with_feature(definition: str) -> str:
    return (TEXT.replace("    ts: {type: timestamp}", "    ts: {type: timestamp}\n    promo: {type: bool}")
            .replace("    - {name: secs_since_last, agg: time_since_last}",
                     f"    - {{name: secs_since_last, agg: time_since_last}}\n    - {definition}"))


@pytest.mark.parametrize("agg", ["sum", "mean"])
def test_bool_fields_can_be_counted_and_averaged(agg):
    spec = parse_spec(with_feature(f"{{name: promo_{agg}, agg: {agg}, field: promo, window: 1h}}"))
    assert spec.features.definitions[-1].field == "promo"


@pytest.mark.parametrize("agg", ["std", "min", "max", "ratio_to_mean"])
def test_other_numeric_aggregations_refuse_bool_fields(agg):
    with pytest.raises(SpecError, match=f"'{agg}' needs a numeric field; 'promo' is bool"):
        parse_spec(with_feature(f"{{name: promo_x, agg: {agg}, field: promo, window: 1h}}"))


def test_drift_adaptive_river_learners_are_available():
    from shared.spec import ALGORITHMS
    river = ALGORITHMS["river"]
    assert set(river["adaptive_hoeffding_tree"]) == {"binary", "multiclass"}
    assert set(river["adaptive_random_forest"]) == {"binary", "multiclass"}
    assert set(river["adaptive_hoeffding_tree_regressor"]) == {"regression"}
    assert set(river["adaptive_random_forest_regressor"]) == {"regression"}
    assert river["adaptive_hoeffding_tree"]["binary"] == "river.tree.HoeffdingAdaptiveTreeClassifier"
    assert river["adaptive_random_forest_regressor"]["regression"] == "river.forest.ARFRegressor"
    text = TEXT.replace("algorithm: logistic_regression}", "algorithm: adaptive_hoeffding_tree}", 1)
    assert parse_spec(text).models[0].algorithm == "adaptive_hoeffding_tree"


def test_every_model_class_exists_and_is_in_the_readme():
    import importlib
    from shared.spec import ALGORITHMS
    readme = Path("README.md").read_text()
    for library, algorithms in ALGORITHMS.items():
        for algorithm, classes in algorithms.items():
            assert f"| {library} | `{algorithm}` |" in readme, (library, algorithm)
            for label_type, dotted in classes.items():
                module, name = dotted.rsplit(".", 1)
                assert isinstance(getattr(importlib.import_module(module), name), type), dotted
                assert f"`{dotted}`" in readme, dotted


@pytest.mark.parametrize("primary, minimum, reason", [
    ("roc_auc", "1.5", "'roc_auc' lies in [0, 1]"),
    ("roc_auc", "-0.1", "'roc_auc' lies in [0, 1]"),
    ("log_loss", "-0.2", "a bound for 'log_loss' cannot be negative"),
])
def test_metric_minimum_outside_the_metric_range_is_refused(primary, minimum, reason):
    text = TEXT.replace("primary: roc_auc", f"primary: {primary}").replace("minimum: 0.75", f"minimum: {minimum}")
    with pytest.raises(SpecError, match=r"metrics.minimum \(line 57\): " + re.escape(reason)):
        parse_spec(text)


def test_minimum_of_a_loss_is_documented_as_an_upper_bound():
    from shared.spec import MetricsSpec
    assert "upper bound" in MetricsSpec.model_fields["minimum"].description
