"""A drift signal for benchmarks: the drift service's ``POST /v1/watch`` contract and its
``kubeloop_drift_detected`` gauge, flagged for the version named in a trigger file.

Usage: python bench/operator/drift_signal.py PORT TRIGGER_FILE
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

port, trigger = int(sys.argv[1]), Path(sys.argv[2])
watched: dict[str, str] = {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        watched[body["model"]] = body["version"]
        self.send_response(200)
        self.end_headers()

    def do_GET(self):
        registry = CollectorRegistry()
        gauge = Gauge(
            "kubeloop_drift_detected",
            "drift",
            ["model", "version", "detector", "feature"],
            registry=registry,
        )
        drifting = trigger.read_text().strip() if trigger.exists() else ""
        for model, version in watched.items():
            gauge.labels(model, version, "mmd", "_all").set(1 if version == drifting else 0)
        data = generate_latest(registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
