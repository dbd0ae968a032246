"""Request validation, traffic split and CloudEvents headers: pure logic."""

from __future__ import annotations

import copy
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeloop.data.fraud import FRAUD_SCHEMA
from kubeloop.router.split import SplitError, bucket, choose, parse_split
from kubeloop.serving.inputs import (
    InputValidator,
    Limits,
    RequestRejected,
    check_v2_body,
    payload_limit_for,
)
from kubeloop.serving.payload import REQUEST_TYPE, RESPONSE_TYPE, EventContext, build_events

ROW = {
    "amount": 50.0,
    "merchant_category": "grocery",
    "hour": 12,
    "distance_from_home_km": 3.0,
    "is_foreign": 0,
    "txn_count_1h": 1,
    "account_age_days": 300.0,
    "avg_amount_30d": 40.0,
    "txn_count_24h": 2.0,
}
VIEW = ("account_age_days", "avg_amount_30d", "txn_count_24h")


@pytest.fixture
def validator() -> InputValidator:
    return InputValidator(FRAUD_SCHEMA, Limits(max_batch=4))


def test_full_rows_need_no_lookup(validator):
    out = validator.validate_v1({"instances": [ROW, {**ROW, "account_id": 7}]})
    assert out.needs_lookup == []
    assert out.instances[1]["account_id"] == 7 and out.instances[0]["amount"] == 50.0


def test_entity_only_rows_are_marked_for_lookup(validator):
    row = {k: v for k, v in ROW.items() if k not in VIEW} | {"account_id": 1001}
    out = validator.validate_v1({"instances": [ROW, row]})
    assert out.needs_lookup == [1]


@pytest.mark.parametrize(
    ("body", "reason", "needle"),
    [
        ([], "malformed_body", "JSON object"),
        ({"instances": "x"}, "malformed_body", "list"),
        ({"instances": []}, "malformed_body", "empty"),
        ({"instances": [ROW] * 5}, "batch_too_large", "limit of 4"),
        ({"instances": [ROW], "extra": 1}, "unknown_field", "extra"),
        ({"instances": [{**ROW, "colour": "red"}]}, "unknown_field", "colour"),
        ({"instances": [{k: v for k, v in ROW.items() if k != "hour"}]}, "missing_field", "hour"),
        ({"instances": [{**ROW, "amount": "12"}]}, "wrong_type", "amount"),
        ({"instances": [{**ROW, "amount": True}]}, "wrong_type", "amount"),
        ({"instances": [{**ROW, "amount": math.nan}]}, "not_finite", "amount"),
        ({"instances": [{**ROW, "amount": math.inf}]}, "not_finite", "amount"),
        ({"instances": [{**ROW, "amount": -1.0}]}, "out_of_range", "amount"),
        ({"instances": [{**ROW, "hour": 12.5}]}, "wrong_type", "hour"),
        ({"instances": [{**ROW, "merchant_category": "casino"}]}, "unknown_category", "casino"),
        (
            {"instances": [{k: v for k, v in ROW.items() if k != "avg_amount_30d"}]},
            "missing_field",
            "avg_amount_30d",
        ),
        (
            {"instances": [{k: v for k, v in ROW.items() if k not in VIEW}]},
            "missing_field",
            "account_id",
        ),
    ],
)
def test_bad_v1_bodies_are_rejected_with_reason(validator, body, reason, needle):
    with pytest.raises(RequestRejected) as err:
        validator.validate_v1(body)
    assert err.value.kind == reason
    assert needle in str(err.value)


def test_bytes_bodies_are_parsed_or_rejected(validator):
    import orjson

    assert validator.validate_v1(orjson.dumps({"instances": [ROW]})).instances[0]["hour"] == 12
    with pytest.raises(RequestRejected, match="not valid JSON"):
        validator.validate_v1(b"{nope")


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["grocery", "casino", "12", ""]),
)
_FIELDS = st.sampled_from([*ROW, "account_id", "transaction_id", "colour"])


@st.composite
def _instances(draw):
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        row = dict(ROW, account_id=1001)
        for key in draw(st.lists(_FIELDS, max_size=3)):
            if draw(st.booleans()):
                row.pop(key, None)
            else:
                row[key] = draw(_VALUES)
        if draw(st.booleans()):
            for name in VIEW:
                row.pop(name, None)
        rows.append(row)
    return rows


@settings(max_examples=400, deadline=None)
@given(_instances())
def test_column_checks_agree_with_the_row_by_row_path(instances):
    """The batch fast path accepts exactly what the row-by-row path accepts, unchanged."""
    validator = InputValidator(FRAUD_SCHEMA, Limits(max_batch=4))
    try:
        expected = validator.validate_rows(copy.deepcopy(instances))
    except RequestRejected as exc:
        with pytest.raises(RequestRejected) as err:
            validator.validate_instances(instances)
        assert err.value.kind == exc.kind and str(err.value) == str(exc)
        return
    got = validator.validate_instances(instances)
    assert got.needs_lookup == expected.needs_lookup
    assert got.instances == expected.instances
    for g, e in zip(got.instances, expected.instances, strict=True):
        assert {k: type(v) for k, v in g.items()} == {k: type(v) for k, v in e.items()}


def test_valid_batches_take_the_column_path(validator):
    rows = [ROW, {k: v for k, v in ROW.items() if k not in VIEW} | {"account_id": 7}]
    assert validator._columns_ok(rows) == [1]
    # an int sent for a float feature is valid but needs coercion: the row path does it
    assert validator._columns_ok([{**ROW, "amount": 50}]) is None
    assert validator.validate_instances([{**ROW, "amount": 50}]).instances[0]["amount"] == 50.0


def _v2(row, n=1):
    types = {
        "merchant_category": "BYTES",
        "hour": "INT64",
        "is_foreign": "INT64",
        "txn_count_1h": "INT64",
    }
    return [(k, types.get(k, "FP64"), [n], [v] * n) for k, v in row.items()]


def test_v2_tensors_become_instances(validator):
    instances = validator.v2_instances(_v2(ROW, 3))
    assert len(instances) == 3 and instances[2] == ROW


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: [("nope", "FP64", [1], [1.0]), *t], "unknown_field"),
        (lambda t: [(t[0][0], "FP64", [1, 1], [1.0]), *t[1:]], "wrong_shape"),
        (lambda t: [(t[0][0], "FP64", [2], [1.0]), *t[1:]], "wrong_shape"),
        (lambda t: [(t[0][0], "BYTES", [1], ["1"]), *t[1:]], "wrong_type"),
        (lambda t: [t[0], (t[0][0], "FP64", [1], [1.0]), *t[1:]], "malformed_body"),
        (lambda t: [], "malformed_body"),
    ],
)
def test_bad_v2_tensors_are_rejected(validator, mutate, reason):
    with pytest.raises(RequestRejected) as err:
        validator.v2_instances(mutate(_v2(ROW)))
    assert err.value.kind == reason


@pytest.mark.parametrize(
    ("tensor", "reason", "needles"),
    [
        (("amount", "INT64", [1], [12.5]), "wrong_type", ["amount", "INT64", "12.5"]),
        (("account_id", "INT64", [1], [2**70]), "out_of_range", ["account_id", "INT64"]),
        (("hour", "INT8", [1], [300]), "out_of_range", ["hour", "INT8", "300"]),
        (("hour", "UINT32", [1], [-1]), "out_of_range", ["hour", "UINT32"]),
        (("hour", "INT64", [1], [True]), "wrong_type", ["hour", "True"]),
        (("hour", "INT64", [1], ["12"]), "wrong_type", ["hour", "'12'"]),
    ],
)
def test_int_tensors_hold_integers_in_their_range(validator, tensor, reason, needles):
    inputs = [t for t in _v2(ROW) if t[0] != tensor[0]] + [tensor]
    with pytest.raises(RequestRejected) as err:
        validator.v2_instances(inputs)
    assert err.value.kind == reason
    for needle in needles:
        assert needle in str(err.value)


def test_int_columns_stay_in_int64_on_v1(validator):
    for value in (2**70, 1e30):
        row = {**ROW, "account_id": value}
        with pytest.raises(RequestRejected) as err:
            validator.validate_v1({"instances": [row]})
        assert err.value.kind == "out_of_range" and "account_id" in str(err.value)
        with pytest.raises(RequestRejected):
            validator.validate_v1({"instances": [row] * 3})  # the column path too


_TENSOR = {"name": "amount", "shape": [1], "datatype": "FP64", "data": [1.0]}


@pytest.mark.parametrize(
    ("body", "reason", "needle"),
    [
        ([], "malformed_body", "JSON object"),
        ({"inputs": None}, "malformed_body", "inputs"),
        ({}, "malformed_body", "inputs"),
        ({"inputs": [_TENSOR], "instances": []}, "unknown_field", "instances"),
        ({"inputs": [{**_TENSOR, "colour": 1}]}, "unknown_field", "colour"),
        ({"inputs": [1]}, "malformed_body", "input 0"),
    ],
)
def test_v2_bodies_with_unknown_keys_are_rejected(body, reason, needle):
    with pytest.raises(RequestRejected) as err:
        check_v2_body(body)
    assert err.value.kind == reason and needle in str(err.value)


def test_v2_body_with_known_keys_passes():
    check_v2_body({"id": "a", "parameters": {}, "inputs": [{**_TENSOR, "parameters": {}}],
                   "outputs": [{"name": "score"}]})  # fmt: skip
    check_v2_body({"model_name": "m", "inputs": [_TENSOR]})  # what kserve's client sends


def test_payload_limit_follows_the_batch_limit():
    assert payload_limit_for(256) == 1_048_576
    assert payload_limit_for(100_000) >= 100_000 * 400  # a V1 row is ~220 bytes
    assert payload_limit_for(100_000, 2_000) == 2_000


def test_v2_metadata_describes_the_schema(validator):
    inputs = {i["name"]: i for i in validator.v2_metadata_inputs()}
    assert inputs["merchant_category"]["datatype"] == "BYTES"
    assert inputs["hour"]["parameters"]["max"] == 23
    assert inputs["account_age_days"]["parameters"]["source"] == "feature_view"
    assert inputs["account_id"]["parameters"]["source"] == "entity"


SPLIT = {
    "model": "fraud-detector",
    "stable": {"version": "v1", "url": "http://127.0.0.1:1"},
    "canary": {"version": "v2", "url": "http://127.0.0.1:2"},
    "canary_percent": 20,
}


def test_split_is_sticky_and_proportional():
    split = parse_split(SPLIT)
    routes = [choose(split, f"user-{i}") for i in range(20_000)]
    share = sum(r.role == "canary" for r in routes) / len(routes)
    assert 0.18 < share < 0.22
    assert all(choose(split, f"user-{i}").role == routes[i].role for i in range(0, 20_000, 97))


def test_raising_the_canary_share_only_moves_keys_to_the_canary():
    low, high = parse_split(SPLIT), parse_split({**SPLIT, "canary_percent": 50})
    for i in range(5000):
        if choose(low, str(i)).role == "canary":
            assert choose(high, str(i)).role == "canary"


def test_shadow_mirrors_and_always_answers_from_stable():
    split = parse_split({**SPLIT, "shadow": True, "canary_percent": 30})
    routes = [choose(split, None, random.Random(i)) for i in range(2000)]
    assert all(r.role == "stable" for r in routes)
    mirrored = sum(r.mirror is not None for r in routes) / len(routes)
    assert 0.25 < mirrored < 0.35
    assert split.percent("stable") == 100 and split.percent("shadow") == 30


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"canary": None}, "needs a canary"),
        ({"canary_percent": 120}, "canary_percent"),
        ({"stable": {"version": "one", "url": "http://x:1"}}, "stable.version"),
        ({"canary": {"version": "v1", "url": "http://x:1"}}, "different versions"),
        ({"weights": 3}, "weights"),
    ],
)
def test_invalid_splits_name_the_problem(change, needle):
    with pytest.raises(SplitError, match=needle):
        parse_split({**SPLIT, **change})


def test_bucket_is_stable_across_processes():
    assert bucket("account-1001") == bucket("account-1001")
    assert 0 <= bucket("x") < 10_000


def test_cloudevents_pair_shares_id_and_headers():
    ctx = EventContext(model="fraud-detector", version="v3", endpoint="canary")
    (req_h, req_b), (resp_h, _) = build_events(
        ctx, "rid-1", {"instances": [ROW]}, {"predictions": []}
    )
    assert req_h["Ce-Id"] == resp_h["Ce-Id"] == "rid-1"
    assert req_h["Ce-Type"] == REQUEST_TYPE and resp_h["Ce-Type"] == RESPONSE_TYPE
    assert req_h["Ce-Specversion"] == "1.0" and req_h["Ce-Endpoint"] == "canary"
    assert req_h["Ce-Modelversion"] == "v3" and req_h["Ce-Inferenceservicename"] == "fraud-detector"
    assert b"merchant_category" in req_b
