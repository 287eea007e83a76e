"""ovstream runtime: classify video streams with OpenVINO in a ZeroMQ multiprocessing pipeline.

    from stream import Pipeline, PipelineConfig

The pipeline is imported on first use, so `stream.geometry` or `stream.model` alone stay light.
"""

from typing import Any

__all__ = ["Pipeline", "PipelineConfig", "PipelineError", "RunSummary", "SourceReport"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from stream import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'stream' has no attribute {name!r}")
