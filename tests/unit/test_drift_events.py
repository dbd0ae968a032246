"""Payload-event, feedback, request-parameter and settings validation of the drift service
(pure logic)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeloop.contracts.payload_events import MAX_ATTRIBUTE_CHARS, REJECT_REASONS
from kubeloop.drift.config import DetectorSettings, DriftConfigError, check_alibi_license
from kubeloop.drift.events import (
    MAX_MESSAGE_CHARS,
    EventRejected,
    parse_cloudevent,
    parse_feedback,
    validate_instances,
    validate_predictions,
)
from kubeloop.drift.params import BadRequest, report_fdr, wait_timeout, watch_request
from kubeloop.drift.reference import ReferenceError, feature_spec
from tests.support.events import payload_headers, payload_pair

NUMERIC = ["amount", "hour"]
CATS = {"merchant_category": ["grocery", "online"]}
GOOD = {"amount": 12.5, "hour": 3, "merchant_category": "online"}


def reason(fn, *args) -> str:
    with pytest.raises(EventRejected) as exc:
        fn(*args)
    assert exc.value.reason in REJECT_REASONS
    assert 400 <= exc.value.status < 500
    return exc.value.reason


def test_binary_pair_round_trips():
    rid, [(h1, b1), (h2, b2)] = payload_pair([GOOD], [0.2], [0], "fraud-detector", "v3")
    req, resp = parse_cloudevent(h1, b1), parse_cloudevent(h2, b2)
    assert (req.kind, resp.kind) == ("request", "response")
    assert req.id == resp.id == rid and req.model == "fraud-detector" and req.version == "v3"
    assert validate_instances(req.data, NUMERIC, CATS) == [GOOD]
    assert validate_predictions(resp.data, 1) == ([0.2], [0])


def test_structured_mode_is_parsed():
    body = json.dumps({
        "specversion": "1.0", "id": "r1", "source": "s", "type": "org.kubeflow.serving.inference.request",
        "inferenceservicename": "m", "modelversion": "v1", "datacontenttype": "application/json",
        "data": {"instances": [GOOD]},
    }).encode()  # fmt: skip
    event = parse_cloudevent({"content-type": "application/cloudevents+json"}, body)
    assert event.kind == "request" and event.data == {"instances": [GOOD]}


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"content-type": "application/json"}, b"{}", "malformed_event"),
        ({**payload_headers("request", "x", "m", "v1"), "Ce-Type": "other"}, b"{}", "unsupported_type"),
        ({k: v for k, v in payload_headers("request", "x", "m", "v1").items() if k != "Ce-Inferenceservicename"},
         b"{}", "missing_attribute"),
        (payload_headers("request", "x", "m", "v1"), b"{oops", "invalid_json"),
    ],
)  # fmt: skip
def test_bad_events_are_named(headers, body, expected):
    assert reason(parse_cloudevent, headers, body) == expected


@pytest.mark.parametrize(
    ("instance", "expected"),
    [
        ({"amount": 1.0, "merchant_category": "online"}, "missing_field"),
        ({**GOOD, "extra": 1}, "extra_field"),
        ({**GOOD, "amount": "1"}, "wrong_dtype"),
        ({**GOOD, "amount": True}, "wrong_dtype"),
        ({**GOOD, "amount": float("nan")}, "nan_value"),
        ({**GOOD, "amount": float("inf")}, "nan_value"),
        ({**GOOD, "hour": None}, "nan_value"),
        ({**GOOD, "merchant_category": 3}, "wrong_dtype"),
        ({**GOOD, "merchant_category": "casino"}, "unknown_category"),
        ("not an object", "wrong_dtype"),
    ],
)
def test_bad_instances_are_named(instance, expected):
    assert reason(validate_instances, {"instances": [instance]}, NUMERIC, CATS) == expected


def test_entity_key_next_to_the_features_is_accepted_but_not_any_key():
    row = {**GOOD, "account_id": 1042}
    assert validate_instances({"instances": [row]}, NUMERIC, CATS, {"account_id"}) == [row]
    assert reason(validate_instances, {"instances": [row]}, NUMERIC, CATS) == "extra_field"
    spec = feature_spec(
        {
            "columns": [
                {"name": "account_id", "dtype": "int", "role": "entity"},
                {"name": "transaction_id", "dtype": "string", "role": "id"},
                {"name": "amount", "dtype": "float"},
                {"name": "is_fraud", "dtype": "int", "role": "label"},
            ]
        }
    )
    assert spec.keys == {"account_id", "transaction_id"} and spec.numeric == ["amount"]


def test_empty_or_missing_instances():
    assert reason(validate_instances, {"instances": []}, NUMERIC, CATS) == "missing_field"
    assert reason(validate_instances, [GOOD], NUMERIC, CATS) == "missing_field"


@pytest.mark.parametrize(
    "data",
    [
        {"predictions": [{"score": 0.1, "label": 0}, {"score": 0.2, "label": 0}]},
        {"predictions": [{"score": 1.5, "label": 0}]},
        {"predictions": [{"score": 0.5, "label": 2}]},
        {"predictions": [{"score": "0.5", "label": 0}]},
        {"predictions": [{"label": 0}]},
        {"outputs": []},
    ],
)
def test_bad_responses(data):
    assert reason(validate_predictions, data, 1) == "bad_response"


def test_feedback_forms():
    assert parse_feedback(b'{"request_id": "a", "labels": [1, 0]}') == [("a", [1, 0])]
    batch = json.dumps(
        {"feedback": [{"request_id": "a", "labels": [1]}, {"request_id": "b", "labels": [0]}]}
    )
    assert parse_feedback(batch.encode()) == [("a", [1]), ("b", [0])]
    assert reason(parse_feedback, b"nope") == "invalid_json"
    assert reason(parse_feedback, b'{"request_id": "a", "labels": [2]}') == "bad_feedback"
    assert reason(parse_feedback, b'{"request_id": 5, "labels": [1]}') == "bad_feedback"
    assert reason(parse_feedback, b'{"feedback": []}') == "bad_feedback"


def test_detector_settings_validate_and_name_the_field():
    s = DetectorSettings().with_overrides(
        {"ert": "250", "univariate_windows": "[10, 40]", "mmd": "false"}
    )
    assert s.ert == 250.0 and s.univariate_windows == (10, 40) and s.mmd is False
    with pytest.raises(DriftConfigError, match="ert"):
        DetectorSettings(ert=0.5)
    with pytest.raises(DriftConfigError, match="unknown detector setting"):
        DetectorSettings().with_overrides({"nope": 1})
    with pytest.raises(DriftConfigError, match="mmd_every"):
        DetectorSettings().with_overrides({"mmd_every": "often"})


def test_newer_alibi_needs_an_explicit_opt_in():
    check_alibi_license("0.11.4", allow_bsl=False)
    with pytest.raises(DriftConfigError, match="Business Source"):
        check_alibi_license("0.12.0", allow_bsl=False)
    check_alibi_license("0.12.0", allow_bsl=True)


def test_feature_spec_from_the_fraud_schema():
    from kubeloop.data.fraud import FRAUD_SCHEMA

    spec = feature_spec(json.loads(FRAUD_SCHEMA.to_json()))
    assert spec.label == "is_fraud"
    assert (
        "merchant_category" in spec.categorical and len(spec.categorical["merchant_category"]) == 8
    )
    assert spec.binary == {"is_foreign"} and "hour" in spec.integer and "amount" not in spec.integer
    assert set(spec.names) == {c.name for c in FRAUD_SCHEMA.features}
    with pytest.raises(ReferenceError, match="label"):
        feature_spec({"columns": [{"name": "x", "dtype": "float"}]})


def test_binary_fast_path_reads_what_cloudevents_reads():
    from cloudevents.http import from_http

    _, [(headers, body), _response] = payload_pair([GOOD], [0.2], [0], "fraud-detector", "v3")
    ours = parse_cloudevent({k.upper(): v for k, v in headers.items()}, body)
    theirs = from_http(headers, body)
    assert ours.id == theirs["id"] and ours.model == theirs["inferenceservicename"]
    assert ours.version == theirs["modelversion"] and ours.data == theirs.data
    # Without a required attribute the event goes through cloudevents and is refused by it.
    no_source = {k: v for k, v in headers.items() if k != "Ce-Source"}
    assert reason(parse_cloudevent, no_source, body) == "malformed_event"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"Ce-Specversion": "0.3"}, "unsupported_specversion"),
        ({"Ce-Specversion": "2.0"}, "unsupported_specversion"),
        ({"Ce-Id": "x" * 60_000}, "attribute_too_long"),
        ({"Ce-Id": "x" * 257}, "attribute_too_long"),
        ({"Ce-Inferenceservicename": "m" * 300}, "attribute_too_long"),
        ({"Ce-Id": "bad\x07id"}, "malformed_event"),
    ],
)
def test_attributes_are_bounded_and_only_spec_1_0_is_read(change, expected):
    headers = {**payload_headers("request", "x", "m", "v1"), **change}
    body = json.dumps({"instances": [GOOD]}).encode()
    assert reason(parse_cloudevent, headers, body) == expected
    # The limit itself is accepted.
    ok = {**payload_headers("request", "y" * MAX_ATTRIBUTE_CHARS, "m", "v1")}
    assert parse_cloudevent(ok, body).id == "y" * MAX_ATTRIBUTE_CHARS


def test_structured_mode_spec_0_3_is_refused():
    body = json.dumps({
        "specversion": "0.3", "id": "r1", "source": "s", "type": "org.kubeflow.serving.inference.request",
        "inferenceservicename": "m", "modelversion": "v1", "data": {"instances": [GOOD]},
    }).encode()  # fmt: skip
    headers = {"content-type": "application/cloudevents+json"}
    assert reason(parse_cloudevent, headers, body) == "unsupported_specversion"


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        (parse_cloudevent, ({**payload_headers("request", "x", "m", "v1"), "Ce-Type": "t" * 200}, b"{}")),
        (validate_instances, ({"instances": [{**GOOD, "merchant_category": "c" * 10**6}]}, NUMERIC, CATS)),
        (validate_instances, ({"instances": [{**GOOD, "k" * 10**6: 1}]}, NUMERIC, CATS)),
        (validate_instances, ({"instances": [{**GOOD, **{f"k{i}": 1 for i in range(10**4)}}]}, NUMERIC, CATS)),
        (validate_predictions, ({"predictions": [{"score": "s" * 10**6, "label": 0}]}, 1)),
        (validate_predictions, ({"predictions": [{"score": 0.1, "label": "l" * 10**6}]}, 1)),
    ],
)  # fmt: skip
def test_error_messages_never_echo_unbounded_input(fn, args):
    with pytest.raises(EventRejected) as exc:
        fn(*args)
    assert len(str(exc.value)) <= MAX_MESSAGE_CHARS


def test_numbers_past_float_range_and_deep_nesting_are_refused_not_crashed():
    assert reason(
        validate_instances, {"instances": [{**GOOD, "amount": 10**400}]}, NUMERIC, CATS
    ) == ("nan_value")
    assert reason(validate_predictions, {"predictions": [{"score": 10**400, "label": 0}]}, 1) == (
        "bad_response"
    )
    deep = b"[" * 100_000 + b"]" * 100_000
    assert reason(parse_feedback, deep) == "invalid_json"
    assert reason(parse_cloudevent, payload_headers("request", "x", "m", "v1"), deep) == (
        "invalid_json"
    )
    assert reason(parse_feedback, b"\xff\xfe") == "invalid_json"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, None),
        ({"wait": "idle"}, 30.0),
        ({"wait": "idle", "timeout": "2.5"}, 2.5),
        ({"wait": "idle", "timeout": "abc"}, "timeout"),
        ({"wait": "idle", "timeout": "nan"}, "timeout"),
        ({"wait": "idle", "timeout": "inf"}, "timeout"),
        ({"wait": "idle", "timeout": "-1"}, "timeout"),
        ({"wait": "idle", "timeout": "1e9"}, "timeout"),
        ({"wait": "busy"}, "wait"),
        ({"wait": "armed"}, "wait"),
    ],
)
def test_status_query_parameters(query, expected):
    if expected is None or isinstance(expected, float):
        assert wait_timeout(query) == expected
    else:
        with pytest.raises(BadRequest, match=f"'{expected}'"):
            wait_timeout(query)


@pytest.mark.parametrize(
    ("query", "expected"),
    [({}, None), ({"wait": "armed", "timeout": "5"}, 5.0), ({"wait": "idle"}, "wait")],
)
def test_watch_query_parameters(query, expected):
    if expected is None or isinstance(expected, float):
        assert wait_timeout(query, "armed") == expected
    else:
        with pytest.raises(BadRequest, match=f"'{expected}'"):
            wait_timeout(query, "armed")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "m", "version": "v1"}, ("m", "v1", None, None, False)),
        (
            {"model": "m", "version": 3, "detectors": {"ert": 100}},
            ("m", "3", None, {"ert": 100}, False),
        ),
        (
            {"model": "m", "version": "latest", "registry_uri": "/r"},
            ("m", "latest", "/r", None, False),
        ),
        ({"model": "m", "version": "v2", "reset": True}, ("m", "v2", None, None, True)),
        ({"model": "m", "version": "v2", "reset": "yes"}, "reset"),
        ({"model": "m", "version": "v2", "reset": 1}, "reset"),
        ([], "object"),
        ({"model": "../etc", "version": "v1"}, "model"),
        ({"model": "m", "version": "v1/../../x"}, "version"),
        ({"model": "m", "version": True}, "version"),
        ({"model": "m" * 300, "version": "v1"}, "model"),
        ({"model": "m", "version": "v1", "registry_uri": "a\x00b"}, "registry_uri"),
        ({"model": "m", "version": "v1", "registry_uri": 5}, "registry_uri"),
        ({"model": "m", "version": "v1", "detectors": [1]}, "detectors"),
    ],
)
def test_watch_body(body, expected):
    if isinstance(expected, tuple):
        assert watch_request(body) == expected
    else:
        with pytest.raises(BadRequest, match=expected) as exc:
            watch_request(body)
        assert len(str(exc.value)) < 200


def test_detector_settings_refuse_infinite_and_unbounded_values_by_name():
    with pytest.raises(DriftConfigError, match="ert"):
        DetectorSettings().with_overrides({"ert": float("inf")})
    with pytest.raises(DriftConfigError, match="mmd_window") as exc:
        DetectorSettings().with_overrides({"mmd_window": 1e400})
    with pytest.raises(DriftConfigError, match="unknown detector setting") as exc:
        DetectorSettings().with_overrides({"k" * 10**5: 1})
    assert len(str(exc.value)) < 1000


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=300), inner, max_size=3),
    max_leaves=10,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    change=st.dictionaries(
        st.sampled_from(
            [
                "Ce-Id",
                "Ce-Specversion",
                "Ce-Type",
                "Ce-Source",
                "Ce-Modelversion",
                "Ce-Inferenceservicename",
                "Content-Type",
                "Ce-Extra",
            ]
        ),  # fmt: skip
        st.text(max_size=400),
        max_size=3,
    ),
    data=_json,
    n=st.integers(0, 2),
)
def test_any_event_is_parsed_or_refused_with_a_reason_and_a_short_message(change, data, n):
    headers = {**payload_headers("request", "x", "m", "v1"), **change}
    checks = (
        lambda: parse_cloudevent(headers, json.dumps(data).encode()),
        lambda: validate_instances(data, NUMERIC, CATS),
        lambda: validate_instances({"instances": [data]}, NUMERIC, CATS),
        lambda: validate_predictions(data, n),
        lambda: validate_predictions({"predictions": [data]}, 1),
        lambda: parse_feedback(json.dumps(data).encode()),
    )
    for check in checks:
        try:
            check()
        except EventRejected as exc:
            assert exc.reason in REJECT_REASONS and 400 <= exc.status < 500
            assert len(str(exc)) <= MAX_MESSAGE_CHARS


@pytest.mark.parametrize(
    ("params", "expected"), [({}, 0.05), ({"fdr": "0.01"}, 0.01), ({"fdr": "1e-12"}, 1e-12)]
)
def test_report_fdr_defaults_to_five_percent(params, expected):
    assert report_fdr(params) == expected


@pytest.mark.parametrize("raw", ["0", "1", "-0.1", "nan", "inf", "lots"])
def test_a_report_fdr_outside_zero_one_is_named(raw):
    with pytest.raises(BadRequest, match="'fdr' must be a number in \\(0, 1\\)"):
        report_fdr({"fdr": raw})
