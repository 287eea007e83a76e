"""`model-prep`: PyTorch -> ONNX -> OpenVINO IR (preprocessing built in), INT8, checks, speed."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from stream.cli import run_main

COMMANDS: list[tuple[str, str, str]] = [
    ("export", "model_prep.export", "export a PyTorch model to OpenVINO IR (FP32 and FP16)"),
    ("quantize", "model_prep.quantize", "INT8 post-training quantization of the FP32 IR with NNCF"),
    ("validate", "model_prep.validate", "compare every precision's accuracy/fidelity on images"),
    ("bench", "model_prep.bench", "latency/throughput/size table: PyTorch vs FP32/FP16/INT8"),
]


class CudaNoticeToDebug(logging.Filter):
    """torch's 'No CUDA runtime is found, using CUDA_HOME=...' (logged when NNCF imports
    torch.utils.cpp_extension on a machine with nvcc but no GPU) is for people building CUDA
    extensions: it goes to the debug log (-vv), every other record of that logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("No CUDA runtime is found"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("model_prep").isEnabledFor(logging.DEBUG)


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger("torch.utils.cpp_extension").addFilter(CudaNoticeToDebug())
    return run_main(argv, COMMANDS, "model-prep", __doc__)


if __name__ == "__main__":
    sys.exit(main())
