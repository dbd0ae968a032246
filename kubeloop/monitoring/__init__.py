"""Monitoring assets of the main environment: alert rules, dashboards and their CLI.

``rules`` and ``dashboards`` are the one source of the PrometheusRule, ServiceMonitors
and Grafana dashboards under ``manifests/`` and the chart (registered in
``kubeloop.generated``); ``cli`` is ``kubeloop monitoring`` (starts the drift service
and a local Prometheus by hand). All run in the main environment. The drift
service itself, with its own environment, is ``kubeloop.drift``; the names both sides
of the payload events agree on are in ``kubeloop.contracts.payload_events``.
"""
