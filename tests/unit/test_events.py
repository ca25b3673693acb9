"""Event validation against the spec, envelopes, labels, and the topic catalogue."""
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from shared.errors import ValidationFailed
from shared.events import (
    _ID_NAMESPACE, REASON_CODES, Event, EventValidator, Label, LabelIn, derived_event_id, label_id,
)
from shared.spec import parse_spec
from shared.topics import CATALOGUE, Topics
from tests.data import FRAUD, FRAUD_TEXT, VALIDATOR as V, fraud_text, txn

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
GOOD = txn(ts="2026-11-26T10:00:00.250+01:00")


def errors_of(raw):
    with pytest.raises(ValidationFailed) as err:
        V.validate(raw)
    return {(e["field"], e["code"]) for e in err.value.errors}


def test_good_event_is_normalized_into_an_envelope():
    fields = V.validate({**GOOD, "amount": 12, "event_id": "e-1"})
    assert fields["amount"] == 12.0 and isinstance(fields["amount"], float)
    assert fields["ts"] == "2026-11-26T09:00:00.250000Z"
    record = V.envelope(fields, source="http", ingested_at=NOW)
    event = Event.model_validate(record)
    assert event.event_id == "e-1" and event.entity == "u1" and event.type == "transaction"
    assert event.occurred_at == datetime(2026, 11, 26, 9, 0, 0, 250000, tzinfo=timezone.utc)
    assert "event_id" not in event.data and event.data["merchant_category"] == "fuel"


@pytest.mark.parametrize("change, expected", [
    ({"amount": -1}, ("amount", "out_of_range")),
    ({"amount": 50000.01}, ("amount", "out_of_range")),
    ({"amount": float("nan")}, ("amount", "not_finite")),
    ({"amount": float("inf")}, ("amount", "not_finite")),
    ({"amount": "12"}, ("amount", "wrong_type")),
    ({"merchant_category": "casino"}, ("merchant_category", "not_allowed_value")),
    ({"user_id": 7}, ("user_id", "wrong_type")),
    ({"user_id": "u" * 65}, ("user_id", "too_long")),
    ({"ts": "yesterday"}, ("ts", "wrong_type")),
    ({"colour": "red"}, ("colour", "unknown_field")),
    ({"event_id": "has space"}, ("event_id", "bad_format")),
])
def test_bad_fields_name_field_and_reason(change, expected):
    assert expected in errors_of({**GOOD, **change})


def test_missing_and_non_object():
    raw = dict(GOOD)
    del raw["country"]
    assert errors_of(raw) == {("country", "missing")}
    assert errors_of([1, 2]) == {("", "not_an_object")}


def test_labels_typed_by_spec_and_deterministic_id():
    rec = V.label({"event_id": "e-1", "value": 1}, source="http", now=NOW)
    label = Label.model_validate(rec)
    assert label.value is True and label.target_event_id == "e-1"
    assert label.event_id == label_id("e-1") == V.label({"event_id": "e-1", "value": True},
                                                         source="kafka", now=NOW)["event_id"]
    assert label.occurred_at == NOW
    for bad in (2, "yes", 0.5):
        with pytest.raises(ValidationFailed, match="binary label"):
            V.label({"event_id": "e-1", "value": bad}, source="http", now=NOW)
    with pytest.raises(ValidationFailed):
        V.label({"value": True}, source="http", now=NOW)


def test_derived_ids_are_stable():
    # The documented derivation, not a second call in the same process: a restarted ingest (another
    # process) must give a redelivered raw record the id it gave it before.
    assert derived_event_id("acme.events.raw", 1, 5) == "acme.events.raw:1:5"
    long_topic = "t" * 125  # the text would pass the 128 characters of an event id
    assert derived_event_id(long_topic, 1, 5) == str(uuid.uuid5(_ID_NAMESPACE, f"{long_topic}:1:5"))
    assert derived_event_id("/data/x y.ndjson", 0, 3) == str(uuid.uuid5(_ID_NAMESPACE, "/data/x y.ndjson:0:3"))
    positions = [("t", 1, 5), ("t", 1, 6), ("t", 2, 5), ("u", 1, 5), ("t", 11, 5), ("t", 1, 15)]
    ids = {derived_event_id(*p) for p in positions}
    assert len(ids) == len(positions)
    for eid in ids | {derived_event_id(long_topic, 1, 5)}:
        Event.model_validate({"event_id": eid, "type": "t", "occurred_at": NOW, "ingested_at": NOW,
                              "source": "kafka", "data": {}})


def test_catalogue_prefixing_and_unknown_topics():
    t = Topics("x.")
    assert t["events"] == "x.events" and t.spec_of("x.events") is CATALOGUE["events"]
    assert CATALOGUE["models"].configs() == {"cleanup.policy": "compact", "retention.ms": "-1"}
    with pytest.raises(KeyError, match="not in the catalogue"):
        t["evnts"]


def test_every_topic_used_in_code_is_in_the_catalogue():
    """Services name topics as topics["..."]; each name must be catalogued."""
    used = set()
    for path in [*Path("services").rglob("*.py"), *Path("shared").rglob("*.py")]:
        used |= set(re.findall(r'topics\["([^"]+)"\]', path.read_text()))
    assert used, "no topic references found"
    assert used <= set(CATALOGUE), used - set(CATALOGUE)


# ---------------------------------------------------------------- numbers as category values, label classes (issue 9)

def validator_for(text: str) -> EventValidator:
    return EventValidator(parse_spec(text))


def test_category_sent_as_number_or_text_matches_a_value_written_as_number():
    v = validator_for(FRAUD_TEXT.replace("values: [pos, web, app]", "values: [1, 2, 3.5]"))
    for sent, kept in [(1, "1"), ("1", "1"), (1.0, "1"), (3.5, "3.5"), ("3.5", "3.5")]:
        assert v.validate({**GOOD, "channel": sent})["channel"] == kept
    for bad in (4, "01", True, None, float("nan"), 10**400):
        with pytest.raises(ValidationFailed) as err:
            v.validate({**GOOD, "channel": bad})
        assert err.value.errors[0]["field"] == "channel"


def test_quoted_numeric_category_values_accept_numbers_too():
    v = validator_for(FRAUD_TEXT.replace("values: [pos, web, app]", "values: ['1', '2']"))
    assert v.validate({**GOOD, "channel": 2})["channel"] == "2"


def test_text_categories_still_refuse_numbers():
    assert ("channel", "not_allowed_value") in errors_of({**GOOD, "channel": 1})


def test_binary_label_with_named_classes_is_a_bool_for_the_second_class():
    v = validator_for(fraud_text(classes="[declined, approved]"))

    def value(sent):
        return Label.model_validate(v.label({"event_id": "e-1", "value": sent}, source="http", now=NOW)).value

    assert value("approved") is True and value("declined") is False
    assert value(True) is True and value(0) is False
    for bad in ("maybe", "Approved", 2):
        with pytest.raises(ValidationFailed, match=r"true/false, 0/1 or one of \['declined', 'approved'\]"):
            v.label({"event_id": "e-1", "value": bad}, source="http", now=NOW)


def test_multiclass_label_written_as_numbers_accepts_numbers_and_text():
    v = validator_for(fraud_text(label="multiclass", classes="[0, 1, 2]"))
    for sent in (1, "1", 1.0):
        assert v.label({"event_id": "e-1", "value": sent}, source="http", now=NOW)["value"] == "1"
    for bad in (True, 3, "one"):
        with pytest.raises(ValidationFailed, match=r"one of \['0', '1', '2'\]"):
            v.label({"event_id": "e-1", "value": bad}, source="http", now=NOW)


def test_topic_prefix_gets_a_separator():
    assert Topics("acme")["events"] == "acme.events"
    assert Topics("acme").group("ingest") == "acme.loopline.ingest.main"
    assert Topics("acme").spec_of("acme.events") is CATALOGUE["events"]
    for prefix in ("t1234abcd.", "acme-", "acme_", ""):
        assert Topics(prefix)["events"] == prefix + "events"
        assert Topics(prefix).group("ingest", "raw") == prefix + "loopline.ingest.raw"


# ---------------------------------------------------------------- event time against the clock, schemas

def test_event_time_more_than_max_ahead_of_the_clock_is_refused_with_code_future():
    ahead = timedelta(seconds=300)
    ok = V.envelope(V.validate({**GOOD, "ts": "2026-11-26T12:04:59Z"}), source="http", ingested_at=NOW)
    V.check_not_future(ok, now=NOW, max_ahead=ahead)  # 299 s ahead: fine (clocks drift)
    for ts in ("2026-11-26T12:05:01Z", "9999-12-31T23:59:59Z", "2026-11-26T13:05:01+01:00"):
        record = V.envelope(V.validate({**GOOD, "ts": ts}), source="http", ingested_at=NOW)
        with pytest.raises(ValidationFailed) as err:
            V.check_not_future(record, now=NOW, max_ahead=ahead)
        assert err.value.errors[0]["field"] == "ts" and err.value.reason_code == "future"
        assert "ahead of the receiving service's clock" in err.value.errors[0]["reason"]


def test_label_observed_ahead_of_the_clock_is_refused_and_the_default_is_the_clock():
    ahead = timedelta(seconds=300)
    late = V.label({"event_id": "e-1", "value": 1, "observed_at": "2026-11-26T12:10:00Z"},
                   source="http", now=NOW)
    with pytest.raises(ValidationFailed) as err:
        V.check_not_future(late, now=NOW, max_ahead=ahead)
    assert (err.value.errors[0]["field"], err.value.reason_code) == ("observed_at", "future")
    default = V.label({"event_id": "e-1", "value": 1}, source="http", now=NOW)
    assert default["occurred_at"] == "2026-11-26T12:00:00Z"
    V.check_not_future(default, now=NOW, max_ahead=ahead)
    assert "decides lateness" in LabelIn.model_fields["observed_at"].description


@pytest.mark.parametrize("ts", [1764150000, 1764150000.5, "1764150000", True, "2026-11-26", "noon"])
def test_timestamps_are_rfc3339_strings_not_numbers(ts):
    assert errors_of({**GOOD, "ts": ts}) == {("ts", "wrong_type")}
    with pytest.raises(ValidationFailed) as err:
        V.label({"event_id": "e-1", "value": 1, "observed_at": ts}, source="http", now=NOW)
    assert err.value.errors[0]["field"] == "observed_at" and err.value.reason_code == "wrong_type"


def test_timestamps_outside_the_representable_range_are_an_error_not_a_crash():
    assert errors_of({**GOOD, "ts": "9999-12-31T23:59:59-01:00"}) == {("ts", "wrong_type")}


def test_numeric_bounds_are_json_schema_minimum_and_maximum():
    amount = V.model.model_json_schema()["properties"]["amount"]
    assert (amount["minimum"], amount["maximum"]) == (0, 50000) and "ge" not in amount and "le" not in amount


@pytest.mark.parametrize("label, accepted, refused", [
    ({"type": "binary"}, [True, False, 0, 1], [2, "yes", 0.5, None]),
    ({"type": "multiclass", "classes": ["a", "b"]}, ["a", "b"], ["c", 1, True]),
    ({"type": "regression"}, [0, 1.5, -3], ["1", True, None]),
])
def test_label_value_schema_says_what_the_label_type_accepts(label, accepted, refused):
    v = EventValidator(FRAUD)
    v.label_spec = FRAUD.label.model_copy(update=label)
    schema = v.label_input_schema()["properties"]["value"]
    for value in accepted:
        v.label({"event_id": "e", "value": value}, source="http", now=NOW)
        if "enum" in schema:
            assert value in schema["enum"]
    for value in refused:
        with pytest.raises(ValidationFailed):
            v.label({"event_id": "e", "value": value}, source="http", now=NOW)
        if "enum" in schema:
            assert not any(value == x and type(value) is type(x) for x in schema["enum"])
    if v.label_spec.type == "regression":
        assert schema["type"] == "number"


def test_new_reason_codes_are_in_the_bounded_set():
    assert {"future", "too_large", "empty"} <= REASON_CODES
