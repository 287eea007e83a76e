"""`model-prep`: PyTorch -> ONNX -> OpenVINO IR (preprocessing built in), INT8, checks, speed."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from stream.cli import build_parser, run_guarded, setup_logging

COMMANDS: list[tuple[str, str, str]] = [
    ("export", "model_prep.export", "export a PyTorch model to OpenVINO IR (FP32 and FP16)"),
    ("quantize", "model_prep.quantize", "INT8 post-training quantization of the FP32 IR with NNCF"),
    ("validate", "model_prep.validate", "compare every precision's accuracy/fidelity on images"),
    ("bench", "model_prep.bench", "latency/throughput/size table: PyTorch vs FP32/FP16/INT8"),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(COMMANDS, prog="model-prep", description=__doc__)
    args = parser.parse_args(argv)
    setup_logging(args.verbose, "model-prep")
    return run_guarded(lambda: args._run(args), "model-prep")


if __name__ == "__main__":
    sys.exit(main())
