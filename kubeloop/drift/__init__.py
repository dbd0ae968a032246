"""The drift service: KServe payload CloudEvents in, ``kubeloop_*`` drift metrics out.

Runs in its own environment (``.venv-drift`` locally, the ``drift`` image in a
cluster), started with ``python -m kubeloop.drift``: alibi-detect 0.11.4, the last
Apache-2.0 release, needs numpy<2, Pillow<10 and pydantic<2, which Feast and KServe
cannot share. So nothing here imports the main environment's heavy dependencies
(pydantic 2, ``kubeloop.settings``, ``kubeloop.data.schema``, Feast, KServe, or torch at
import time: the MMD detector imports torch inside the worker); kubeloop is installed
into that environment with ``--no-deps`` and this package reads only numpy, pandas,
alibi-detect, starlette, prometheus-client, cloudevents, ``kubeloop.registry`` and the
wire contract both sides share, ``kubeloop.contracts.payload_events``.

| module | does |
| --- | --- |
| ``service`` | the Starlette app and its command line |
| ``fastpath`` | ``POST /`` (payload events) as plain ASGI |
| ``events`` | CloudEvent parsing, instance/response/feedback validation |
| ``versions`` | tracked versions, their watch state and the backlog kept until armed |
| ``worker`` | the detector worker process |
| ``monitor`` | one watched version: detectors, live accuracy, recent window, report |
| ``estimate`` | accuracy estimated from scores before labels arrive (recalibrated confidence) |
| ``detectors`` | alibi-detect online detectors with a threshold cache |
| ``encoding`` | raw rows → what each detector reads |
| ``reference`` | a registry version's reference sample and schema |
| ``metrics`` | the service's ``kubeloop_*`` series |
| ``config`` | settings from ``KUBELOOP_DRIFT_*`` (plain dataclasses) |
| ``calibration`` | ``python -m kubeloop.drift.calibration``: run lengths and delays |
"""
