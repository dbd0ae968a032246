"""Baseline (a): a plain ``kserve.Model`` doing the same forward pass as kubeloop's predictor.

No validation, no kubeloop metrics, no payload logging: V1 instances straight into a
DataFrame and ``ModelBundle.predict``. Served by the same kserve server (bound to
127.0.0.1) so the comparison isolates what kubeloop adds.

    python bench/serving/plain_model.py --model_name fraud-detector --model-dir DIR --http_port 9000
"""

from __future__ import annotations

import pandas as pd
from kserve import Model

from kubeloop.model import ModelBundle


class PlainModel(Model):
    def __init__(self, name: str, folder: str) -> None:
        super().__init__(name)
        self.folder = folder

    def load(self) -> bool:
        self.bundle = ModelBundle.load(self.folder)
        self.columns = self.bundle.preprocessor.input_columns
        self.ready = True
        return True

    def predict(self, payload, headers=None):
        frame = pd.DataFrame.from_records(payload["instances"], columns=self.columns)
        scores, classes = self.bundle.predict(frame)
        return {
            "predictions": [
                {"score": float(s), "label": int(c)} for s, c in zip(scores, classes, strict=True)
            ]
        }


def main() -> None:
    from kubeloop.serving.server import BoundModelServer, predictor_parser

    args = predictor_parser().parse_args()
    model = PlainModel(args.model_name, args.model_dir)
    model.load()
    BoundModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=False, bind_host="127.0.0.1",
                     enable_latency_logging=False).start([model])  # fmt: skip


if __name__ == "__main__":
    main()
