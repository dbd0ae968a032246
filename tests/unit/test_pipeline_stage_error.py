"""A failed local pipeline stage is reported with its own exception message, read from the
stage's streamed output (kfp.local indents it by four spaces)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeloop.local.pipelines import StageTiming, TrainingRunResult, format_summary, stage_error

INGEST_FAILURE = """\
    [KFP Executor 2026-12-01 23:58:27,997 INFO]: Got executor_input:
    {
        "inputs": {}
    }
    Traceback (most recent call last):
      File "<frozen runpy>", line 198, in _run_module_as_main
      File "/work/main/components/ingest/impl.py", line 33, in run_ingest
        read_source(source_uri, schema_uri, timeout_s=timeout_s), window_start, window_end
        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
      File "/work/main/kubeloop/data/sources.py", line 356, in _finish
        raise SourceError(
    kubeloop.data.sources.SourceError: source /data/x: missing columns ['amount'] declared by schema 'card_transactions'
    \n\n"""

CHAINED = """\
    Traceback (most recent call last):
      File "a.py", line 1, in f
    KeyError: 'x'

    During handling of the above exception, another exception occurred:

    Traceback (most recent call last):
      File "b.py", line 2, in g
    ValueError: bad value
    second line of the message
      indented detail

    trailing output
"""


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            INGEST_FAILURE,
            "SourceError: source /data/x: missing columns ['amount'] declared by schema "
            "'card_transactions'",
        ),
        (CHAINED, "ValueError: bad value\nsecond line of the message\n  indented detail"),
        ("    Traceback (most recent call last):\n      File 'a.py'\n    KeyboardInterrupt\n",
         "KeyboardInterrupt"),
        ("    [train] epoch 1\n    killed\n", None),
        ("", None),
    ],
)  # fmt: skip
def test_stage_error_is_the_last_exception(output, message):
    assert stage_error(output.splitlines()) == message


def test_summary_prints_the_stage_message_indented():
    result = TrainingRunResult(
        run_name="r",
        run_dir=None,
        succeeded=False,
        model_name="m",
        registry_uri="/r",
        stages=[
            StageTiming("ingest", 0.0, 1.0, "SUCCESS"),
            StageTiming("validate", 1.0, 2.0, "FAILURE"),
        ],
        error="DataValidationError: data validation failed\nsecond line",
        reports={"validation": Path("/runs/r/validate/report")},
    )
    text = format_summary(result)
    assert (
        "failed stage: validate — DataValidationError: data validation failed\n    second line"
        in text
    )
    assert "validation: /runs/r/validate/report" in text
