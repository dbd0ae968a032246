"""The local traffic router: what KServe's canary routing does on a cluster.

``python -m kubeloop.router --port N --split-file F`` proxies ``/v1`` and ``/v2``
inference requests to the stable or the canary predictor by the live split (``split``:
the split's model, sticky assignment by request key, atomic save and load), exposes the
admin API (``/admin/split``) and per-version metrics, and sends the KServe logger's
payload events for every prediction.
"""
