"""Baseline (a): a plain ``kserve.Model`` doing the same forward pass as kubeloop's predictor.

No validation, no kubeloop metrics, no payload logging: V1 instances straight into
:class:`kubeloop.serving.forward.Forward` (the predictor's own forward pass), or with
``--dataframe`` into a pandas DataFrame and ``ModelBundle.predict`` (the bundle's
public API, as a first serving attempt would do). Served by the same kserve server
with the same settings (bound to 127.0.0.1, REST and gRPC, as kserve's defaults) so
the comparison isolates what kubeloop adds. ``--edge`` puts kubeloop's REST edge in
front (its checks, and V1 predict answered without FastAPI's router, as the predictor
is served): what is left between it and the predictor is validation, metrics and
payload events.

    python bench/serving/plain_model.py --model_name fraud-detector --model-dir DIR --http_port 9000 --grpc_port 9001
"""

from __future__ import annotations

import sys

import pandas as pd
from kserve import Model

from kubeloop.model import ModelBundle
from kubeloop.serving.forward import Forward


class PlainModel(Model):
    def __init__(self, name: str, folder: str, dataframe: bool = False) -> None:
        super().__init__(name)
        self.version = "plain"
        self.folder = folder
        self.dataframe = dataframe

    def load(self) -> bool:
        self.bundle = ModelBundle.load(self.folder)
        self.forward = Forward(self.bundle)
        self.columns = self.bundle.preprocessor.input_columns
        self.ready = True
        return True

    def predict(self, payload, headers=None):
        if self.dataframe:
            frame = pd.DataFrame.from_records(payload["instances"], columns=self.columns)
            scores, classes = self.bundle.predict(frame)
        else:
            scores, classes = self.forward.predict(payload["instances"])
        return {
            "predictions": [
                {"score": float(s), "label": int(c)} for s, c in zip(scores, classes, strict=True)
            ]
        }


def main() -> None:
    from kubeloop.serving.inputs import Limits
    from kubeloop.serving.server import BoundModelServer, install_guard, predictor_parser

    flags = {"--dataframe", "--edge"}
    args = predictor_parser().parse_args([a for a in sys.argv[1:] if a not in flags])
    model = PlainModel(args.model_name, args.model_dir, dataframe="--dataframe" in sys.argv)
    model.load()
    if "--edge" in sys.argv:
        install_guard(model, Limits())
    # The same server settings as the predictor: kserve's defaults, gRPC included.
    BoundModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc,
                     bind_host="127.0.0.1", grpc_kwargs=vars(args), enable_latency_logging=False).start([model])  # fmt: skip


if __name__ == "__main__":
    main()
