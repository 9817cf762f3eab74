"""The event contract: what decodes, what is rejected and how the rejection reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from models.events import (
    MAX_EVENT_BYTES,
    SCHEMA_PATH,
    Event,
    EventError,
    decode_event,
    event_json_schema,
    validate_event,
    write_json_schema,
)

try:  # optional: the schema is checked against decode_event either way
    import jsonschema
except ImportError:  # pragma: no cover - depends on the environment
    jsonschema = None

NOW = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)

VALID_PROPERTIES: dict[str, dict[str, Any]] = {
    "signup": {},
    "session_start": {},
    "feature_used": {"feature": "export"},
    "purchase": {"amount": 12.5},
    "support_ticket": {"priority": "high"},
    "email_open": {"campaign": "jan"},
}


def event(**changes: Any) -> dict[str, Any]:
    """A valid signup event; a change to `...` removes the key."""
    obj: dict[str, Any] = {
        "event_id": "e1",
        "customer_id": "c1",
        "type": "signup",
        "ts": "2026-01-05T10:00:00Z",
        "properties": {},
    }
    for key, value in changes.items():
        if value is ...:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


def raw(**changes: Any) -> bytes:
    return json.dumps(event(**changes)).encode()


def reject(data: bytes | str, **kwargs: Any) -> EventError:
    with pytest.raises(EventError) as info:
        decode_event(data, **kwargs)
    return info.value


def assert_error(err: EventError, field: str, reason: str, *words: str) -> None:
    assert (err.field, err.reason) == (field, reason), str(err)
    text = err.message.lower()
    for word in words:
        assert word.lower() in text, f"{word!r} not in {err.message!r}"
    # str(err) is what logs and the dead-letter topic show: field first, then the words
    assert str(err).startswith(f"{field}: ")


# --- whole-message errors ---------------------------------------------------------------


@pytest.mark.parametrize("data", [b"not json", b'{"event_id": "e1",', b"", "{'a': 1}"])
def test_not_json(data: bytes | str) -> None:
    assert_error(reject(data), "<event>", "not_json", "json")


def test_not_utf8_is_not_json() -> None:
    assert_error(reject(b"\xff\xfe{}"), "<event>", "not_json", "json")


def _padded(total: int) -> bytes:
    base = raw(properties={"pad": ""})
    data = raw(properties={"pad": "a" * (total - len(base))})
    assert len(data) == total
    return data


def test_exactly_64_kib_is_accepted() -> None:
    data = _padded(64 * 1024)
    assert MAX_EVENT_BYTES == 65536
    assert decode_event(data).properties["pad"] == "a" * (65536 - len(raw(properties={"pad": ""})))


def test_one_byte_over_64_kib_is_too_large() -> None:
    assert_error(reject(_padded(64 * 1024 + 1)), "<event>", "too_large", "65537", "65536")


def test_size_is_counted_in_utf8_bytes_for_str_input() -> None:
    # 30,000 two-byte characters: 60,000 bytes plus the envelope is still within the limit,
    # 33,000 of them (66,000 bytes) are over it although under 65,536 characters.
    ok = json.dumps(event(properties={"pad": "é" * 30_000}), ensure_ascii=False)
    assert decode_event(ok).properties["pad"] == "é" * 30_000
    big = json.dumps(event(properties={"pad": "é" * 33_000}), ensure_ascii=False)
    assert len(big) < MAX_EVENT_BYTES
    assert_error(reject(big), "<event>", "too_large")


@pytest.mark.parametrize("data", [b"[1, 2]", b"[]", b'"an event"', b"42", b"null"])
def test_top_level_non_object(data: bytes) -> None:
    assert_error(reject(data), "<event>", "not_object", "object")


@pytest.mark.parametrize("value", [[1, 2], "x", 3, None])
def test_validate_event_non_dict(value: Any) -> None:
    with pytest.raises(EventError) as info:
        validate_event(value)
    assert_error(info.value, "<event>", "not_object", "object")


# --- required fields ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "customer_id", "type", "ts"])
def test_missing_required_field(field: str) -> None:
    assert_error(reject(raw(**{field: ...})), field, "missing", "required")


@pytest.mark.parametrize("field", ["event_id", "customer_id", "type", "ts"])
def test_missing_required_field_in_parsed_dict(field: str) -> None:
    with pytest.raises(EventError) as info:
        validate_event(event(**{field: ...}))
    assert_error(info.value, field, "missing", "required")


def test_properties_defaults_to_empty_object() -> None:
    e = decode_event(raw(properties=...))
    assert e.properties == {}
    assert validate_event(event(properties=...)).properties == {}


# --- mistyped fields ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "customer_id", "type"])
@pytest.mark.parametrize("value", [5, 1.5, True, ["x"], {"x": 1}, None])
def test_string_field_with_wrong_type(field: str, value: Any) -> None:
    assert_error(reject(raw(**{field: value})), field, "wrong_type", "string")


@pytest.mark.parametrize("value", ["x", 5, ["a"], True])
def test_properties_not_an_object(value: Any) -> None:
    err = reject(raw(properties=value))
    assert_error(err, "properties", "wrong_type")
    assert "object" in err.message or "dict" in err.message


def test_bool_amount_is_wrong_type() -> None:
    err = reject(raw(type="purchase", properties={"amount": True}))
    assert_error(err, "properties.amount", "wrong_type", "number")


def test_string_amount_is_wrong_type() -> None:
    err = reject(raw(type="purchase", properties={"amount": "12.50"}))
    assert_error(err, "properties.amount", "wrong_type", "number")


def test_purchase_without_amount() -> None:
    err = reject(raw(type="purchase", properties={"price": 3}))
    assert_error(err, "properties.amount", "missing", "amount")


def test_purchase_with_null_amount_is_rejected() -> None:
    with pytest.raises(EventError) as info:
        decode_event(raw(type="purchase", properties={"amount": None}))
    assert info.value.field == "properties.amount"


# --- values ------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "customer_id", "type"])
def test_empty_id_is_invalid(field: str) -> None:
    assert_error(reject(raw(**{field: ""})), field, "invalid_value", "1 character")


def test_customer_id_length_limit() -> None:
    assert_error(
        reject(raw(customer_id="c" * 257)), "customer_id", "invalid_value", "256 characters"
    )
    assert decode_event(raw(customer_id="c" * 256)).customer_id == "c" * 256


def test_event_id_length_limit() -> None:
    assert_error(reject(raw(event_id="e" * 257)), "event_id", "invalid_value", "256")
    assert decode_event(raw(event_id="e" * 256)).event_id == "e" * 256


@pytest.mark.parametrize(
    ("literal", "shown"),
    [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf"), ("1e999", "inf"), ("-1", "-1")],
)
def test_amount_must_be_finite_and_not_negative(literal: str, shown: str) -> None:
    data = (
        '{"event_id": "e1", "customer_id": "c1", "type": "purchase",'
        ' "ts": "2026-01-05T10:00:00Z", "properties": {"amount": ' + literal + "}}"
    )
    err = reject(data)
    assert_error(err, "properties.amount", "invalid_value", "finite", ">= 0")
    assert shown in err.message


@pytest.mark.parametrize("amount", [float("nan"), float("inf"), -0.01])
def test_amount_rules_apply_to_parsed_dicts(amount: float) -> None:
    with pytest.raises(EventError) as info:
        validate_event(event(type="purchase", properties={"amount": amount}))
    assert (info.value.field, info.value.reason) == ("properties.amount", "invalid_value")


@pytest.mark.parametrize("amount", [0, 0.0, 19, 19.99])
def test_zero_and_positive_amounts_are_valid(amount: float) -> None:
    e = decode_event(raw(type="purchase", properties={"amount": amount}))
    assert e.properties["amount"] == amount


def test_feature_used_without_feature() -> None:
    err = reject(raw(type="feature_used", properties={}))
    assert_error(err, "properties.feature", "missing", "feature")


def test_feature_used_with_wrong_feature_type() -> None:
    err = reject(raw(type="feature_used", properties={"feature": 7}))
    assert_error(err, "properties.feature", "wrong_type", "string")


def test_feature_used_with_empty_feature() -> None:
    err = reject(raw(type="feature_used", properties={"feature": ""}))
    assert_error(err, "properties.feature", "invalid_value")


def test_builtin_property_rules_only_apply_to_their_type() -> None:
    # an unknown type may carry any amount; the purchase rules do not apply to it
    e = decode_event(raw(type="refund", properties={"amount": -5, "feature": 3}))
    assert e.properties == {"amount": -5, "feature": 3}


# --- ts ----------------------------------------------------------------------------------


def test_ts_without_offset() -> None:
    err = reject(raw(ts="2026-01-05T10:00:00"))
    assert_error(err, "ts", "invalid_value", "timezone")


def test_ts_bare_date() -> None:
    err = reject(raw(ts="2026-01-05"))
    assert err.field == "ts"
    assert err.reason == "invalid_value"


@pytest.mark.parametrize("value", [1767607200, 1767607200.5])
def test_ts_unix_number(value: float) -> None:
    err = reject(raw(ts=value))
    assert_error(err, "ts", "wrong_type", "RFC 3339")


def test_ts_unix_number_as_string() -> None:
    # "1767607200" is not RFC 3339 either; the contract refuses Unix times in any form
    err = reject(raw(ts="1767607200"))
    assert (err.field, err.reason) == ("ts", "invalid_value")


@pytest.mark.parametrize(
    "value", ["2026-02-30T10:00:00Z", "2026-13-01T10:00:00Z", "2026-01-05T25:00:00Z", "soon"]
)
def test_ts_impossible_date(value: str) -> None:
    err = reject(raw(ts=value))
    assert (err.field, err.reason) == ("ts", "invalid_value")
    assert err.message


def test_ts_in_future_beyond_default_tolerance() -> None:
    err = reject(raw(ts="2026-01-05T10:05:01Z"), now=NOW)
    assert_error(err, "ts", "in_future", "2026-01-05T10:05:01", "0:05:00", "ahead")


def test_ts_in_future_within_default_tolerance() -> None:
    assert decode_event(raw(ts="2026-01-05T10:05:00Z"), now=NOW).epoch == NOW.timestamp() + 300
    assert decode_event(raw(ts="2026-01-05T10:04:59Z"), now=NOW).ts.minute == 4


def test_ts_future_tolerance_is_configurable() -> None:
    hour = timedelta(hours=1)
    assert decode_event(raw(ts="2026-01-05T11:00:00Z"), now=NOW, future_tolerance=hour)
    err = reject(raw(ts="2026-01-05T11:00:01Z"), now=NOW, future_tolerance=hour)
    assert (err.field, err.reason) == ("ts", "in_future")
    err = reject(raw(ts="2026-01-05T10:00:01Z"), now=NOW, future_tolerance=timedelta(0))
    assert (err.field, err.reason) == ("ts", "in_future")


def test_future_is_compared_across_offsets() -> None:
    # 12:04+02:00 is 10:04Z: within 5 minutes of now although its wall clock is 2 hours on
    assert decode_event(raw(ts="2026-01-05T12:04:00+02:00"), now=NOW)
    err = reject(raw(ts="2026-01-05T10:06:00-00:00"), now=NOW)
    assert err.reason == "in_future"


def test_no_future_check_without_now() -> None:
    assert decode_event(raw(ts="2099-01-01T00:00:00Z")).ts.year == 2099


def test_future_check_in_validate_event() -> None:
    with pytest.raises(EventError) as info:
        validate_event(event(ts="2026-01-06T00:00:00Z"), now=NOW)
    assert (info.value.field, info.value.reason) == ("ts", "in_future")


# --- deep nesting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opening", "inner", "closing"),
    [('{"a":', "1", "}"), ("[", "", "]")],
    ids=["objects", "arrays"],
)
def test_deeply_nested_properties_never_recurse(opening: str, inner: str, closing: str) -> None:
    depth = 10_000
    data = (
        '{"event_id": "e1", "customer_id": "c1", "type": "x", "ts": "2026-01-05T10:00:00Z",'
        ' "properties": {"deep": ' + opening * depth + inner + closing * depth + "}}"
    )
    assert len(data) <= MAX_EVENT_BYTES
    try:
        decode_event(data)
    except EventError as err:
        assert err.reason in ("not_json", "invalid_value")
    except RecursionError:  # pragma: no cover - the failure this test is about
        pytest.fail("RecursionError escaped decode_event")
    else:
        pytest.fail("10,000 levels of nesting were accepted")


# --- valid events ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(VALID_PROPERTIES))
def test_every_builtin_type_decodes(kind: str) -> None:
    props = VALID_PROPERTIES[kind]
    e = decode_event(raw(type=kind, properties=props, event_id=f"id-{kind}"), now=NOW)
    assert isinstance(e, Event)
    assert (e.event_id, e.customer_id, e.type, e.properties) == (f"id-{kind}", "c1", kind, props)
    assert e.ts == datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def test_unknown_type_decodes() -> None:
    e = decode_event(raw(type="page_view", properties={"path": "/pricing"}))
    assert (e.type, e.properties) == ("page_view", {"path": "/pricing"})


def test_extra_top_level_keys_are_ignored() -> None:
    e = decode_event(raw(source="web", version=3, nested={"a": 1}))
    assert e.event_id == "e1"
    assert not hasattr(e, "source")
    assert "source" not in e.model_dump()


def test_epoch_with_offset() -> None:
    e = decode_event(raw(ts="2026-01-05T12:00:00+02:00"))
    # 12:00+02:00 is 10:00 UTC, 2026-01-05 = 20,458 days after 1970-01-01
    assert e.epoch == 20_458 * 86_400 + 10 * 3600 == 1_767_607_200
    assert e.epoch == decode_event(raw(ts="2026-01-05T10:00:00Z")).epoch


def test_epoch_keeps_fractional_seconds() -> None:
    e = decode_event(raw(ts="2026-01-05T10:00:00.250-05:30"))
    assert e.epoch == 1_767_607_200 + 5.5 * 3600 + 0.25


def test_str_and_bytes_decode_the_same() -> None:
    data = raw(type="purchase", properties={"amount": 3})
    assert decode_event(data) == decode_event(data.decode())


# --- the published schema ----------------------------------------------------------------


def test_published_schema_is_current() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == event_json_schema()


def test_published_schema_file_is_byte_identical_to_what_segstream_schema_writes(
    tmp_path: Any,
) -> None:
    fresh = write_json_schema(tmp_path / "event.schema.json")
    assert fresh.read_text() == SCHEMA_PATH.read_text()


def test_schema_structure() -> None:
    schema = event_json_schema()
    assert schema["type"] == "object"
    assert set(schema["required"]) == {"event_id", "customer_id", "type", "ts"}
    props = schema["properties"]
    for name in ("event_id", "customer_id", "type", "ts"):
        assert props[name]["type"] == "string"
    assert props["properties"]["type"] == "object"
    assert props["customer_id"]["maxLength"] == 256
    assert props["customer_id"]["minLength"] == 1
    assert props["event_id"]["minLength"] == 1
    assert props["ts"]["format"] == "date-time"
    rules = {rule["if"]["properties"]["type"]["const"]: rule["then"] for rule in schema["allOf"]}
    purchase = rules["purchase"]["properties"]["properties"]
    assert purchase["required"] == ["amount"]
    assert purchase["properties"]["amount"] == {"type": "number", "minimum": 0}
    feature = rules["feature_used"]["properties"]["properties"]
    assert feature["required"] == ["feature"]
    assert feature["properties"]["feature"]["type"] == "string"


SCHEMA_EXAMPLES: list[tuple[dict[str, Any], bool]] = [
    (event(), True),
    (event(type="purchase", properties={"amount": 12.5}), True),
    (event(type="feature_used", properties={"feature": "export"}), True),
    (event(type="page_view", properties={"amount": -1}), True),
    (event(properties=...), True),
    (event(customer_id="c" * 256), True),
    (event(customer_id=...), False),
    (event(customer_id="c" * 257), False),
    (event(event_id=""), False),
    (event(type=5), False),
    (event(ts=1767607200), False),
    (event(properties="x"), False),
    (event(type="purchase", properties={"amount": -1}), False),
    (event(type="purchase", properties={"amount": "3"}), False),
    (event(type="purchase", properties={}), False),
    (event(type="feature_used", properties={"feature": 3}), False),
    (event(type="feature_used", properties={}), False),
]


def _mini_validate(instance: Any, schema: dict[str, Any]) -> bool:
    """The subset of JSON Schema the event schema uses, for when jsonschema is absent."""
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "string": lambda v: isinstance(v, str),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    }
    if kind is not None and not checks[kind](instance):
        return False
    if "const" in schema and instance != schema["const"]:
        return False
    if isinstance(instance, str):
        if len(instance) < schema.get("minLength", 0):
            return False
        if len(instance) > schema.get("maxLength", len(instance)):
            return False
    if isinstance(instance, int | float) and not instance >= schema.get("minimum", instance):
        return False
    if isinstance(instance, dict):
        if any(key not in instance for key in schema.get("required", ())):
            return False
        for key, sub in schema.get("properties", {}).items():
            if key in instance and not _mini_validate(instance[key], sub):
                return False
    for rule in schema.get("allOf", ()):
        if _mini_validate(instance, rule["if"]) and not _mini_validate(instance, rule["then"]):
            return False
    return True


@pytest.mark.parametrize(("obj", "valid"), SCHEMA_EXAMPLES)
def test_schema_and_decoder_agree(obj: dict[str, Any], valid: bool) -> None:
    schema = event_json_schema()
    if jsonschema is not None:
        schema_says = jsonschema.Draft202012Validator(schema).is_valid(obj)
    else:
        schema_says = _mini_validate(obj, schema)
    try:
        decode_event(json.dumps(obj))
        decoder_says = True
    except EventError:
        decoder_says = False
    assert (schema_says, decoder_says) == (valid, valid)
