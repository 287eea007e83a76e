"""ovstream runtime: classify video streams with OpenVINO in a ZeroMQ multiprocessing pipeline."""

from stream.pipeline import Pipeline, PipelineConfig, PipelineError, RunSummary, SourceReport

__all__ = ["Pipeline", "PipelineConfig", "PipelineError", "RunSummary", "SourceReport"]
