"""Classify the frames of videos and cameras in the streaming pipeline and publish the results.

    ovstream run cam1=front.mp4 back.mp4 --model models/resnet50 --output results.jsonl
    ovstream run door=rtsp://user:pass@10.0.0.5/stream1 --model models/resnet50 --fps 5
    ovstream run --config cams.toml --model models/resnet50 --mode latency

Files are read once, every frame. Live sources (rtsp://, http(s):// HLS, udp://, rtmp://,
/dev/videoN) run until Ctrl-C: they reconnect with backoff when the stream drops or stalls, and
drop frames rather than fall behind real time. Results go out on a ZeroMQ PUB socket (topic =
stream id; status events under `_status/<stream id>`; `ovstream subscribe` reads both) and, with
--output, to a JSON Lines file. Ctrl-C stops reading, publishes what is in flight, exit 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from stream.config import FRAME_FORMAT_CHOICES
from stream.errors import UserError
from stream.pipeline import Pipeline, PipelineConfig, PipelineError
from stream.progress import Progress, print_summary, result_line
from stream.sources.config_file import ConfigError, load_sources_file
from stream.sources.live_options import LiveOptions
from stream.stages.capture import THREAD_TYPES
from stream.stages.preprocess import DEFAULT_MAX_BATCH
from stream.stages.publish import DEFAULT_PUBLISH
from stream.wire.transport import TransportConfig

PROG = "ovstream"


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def publish_endpoint(text: str) -> str | None:
    """`--publish`: the PUB endpoint, or None for `none`."""
    return None if str(text).lower() in ("none", "") else text


def add_requests_argument(parser: argparse.ArgumentParser) -> None:
    """`--requests N`, of the head's infer stage and of a worker."""
    parser.add_argument(
        "--requests",
        type=int,
        default=0,
        metavar="N",
        help="infer requests in flight (default: the device's optimal number)",
    )


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of how frames are classified and carried, shared by `run` and `batch`."""
    parser.add_argument(
        "--mode",
        choices=("throughput", "latency"),
        default="throughput",
        help="OpenVINO hint: most frames per second (default) or lowest delay",
    )
    parser.add_argument(
        "--device", default="CPU", help="OpenVINO device (default CPU; AUTO, GPU...)"
    )
    parser.add_argument("--topk", type=int, default=5, metavar="K", help="classes per result")
    add_requests_argument(parser)
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        metavar="N",
        help=f"frames handed on together at most (a file's capture message, a batch for infer, "
        f"one inference request): those waiting, never waiting for more "
        f"(default {DEFAULT_MAX_BATCH}; 1 = a frame at a time)",
    )
    parser.add_argument(
        "--frame-format",
        choices=FRAME_FORMAT_CHOICES,
        default="auto",
        help="frames between the stages and to workers: i420 (YUV 4:2:0, half the bytes; "
        "OpenVINO converts it inside the model), bgr, or auto (default: i420 where the model's "
        "input size is even)",
    )
    parser.add_argument(
        "--decoder-threads",
        choices=THREAD_TYPES,
        default="AUTO",
        help="FFmpeg's decoder threads: AUTO (default: frame threads, but one thread a decoder "
        "when there are at least as many decoders as cores), FRAME, SLICE or NONE (one thread)",
    )
    remote = parser.add_argument_group("remote infer workers (ovstream worker)")
    remote.add_argument(
        "--workers",
        metavar="tcp://ADDR:PORT",
        help="bind this endpoint for remote workers; they get frames as they have free requests",
    )
    remote.add_argument(
        "--no-local-infer",
        dest="local_infer",
        action="store_false",
        help="run inference only on remote workers",
    )
    remote.add_argument(
        "--worker-timeout",
        type=positive_float,
        default=5.0,
        metavar="S",
        help="a worker silent this long is dropped; its frames go to others (default 5; one "
        "whose connection closes is dropped at once)",
    )
    remote.add_argument(
        "--keys",
        metavar="DIR",
        help="CURVE keys made by 'ovstream keys': encrypt the worker link, accept only the "
        "workers whose keys are in DIR/authorized",
    )
    remote.add_argument(
        "--secure-publish",
        action="store_true",
        help="with --keys: the results' PUB socket uses CURVE too (ovstream subscribe --keys)",
    )
    remote.add_argument(
        "--insecure",
        action="store_true",
        help="allow binding --workers, and --publish, on a non-loopback address without "
        "--keys (for --publish: without --keys --secure-publish)",
    )
    parser.add_argument(
        "--transport",
        choices=("ipc", "tcp"),
        default="ipc",
        help="links between stages: ipc sockets in a temp dir (default) or tcp",
    )


def inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """The PipelineConfig (and BatchConfig) fields of `add_inference_arguments`' options."""
    return {
        "device": args.device,
        "mode": args.mode,
        "topk": args.topk,
        "requests": args.requests,
        "max_batch": args.max_batch,
        "frame_format": args.frame_format,
        "decoder_threads": args.decoder_threads,
        "workers": args.workers,
        "local_infer": args.local_infer,
        "worker_timeout_s": args.worker_timeout,
        "keys": args.keys,
        "insecure": args.insecure,
        "secure_publish": args.secure_publish,
        "transport": TransportConfig(scheme=args.transport),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="video file, stream URL (rtsp://, http(s)://, udp://, rtmp://) or "
        "/dev/videoN; NAME=SOURCE chooses its stream id (default: file stem)",
    )
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE.toml",
        help="read the sources and their settings from a TOML file",
    )
    parser.add_argument(
        "--model",
        "-m",
        required=True,
        metavar="DIR",
        help="model folder (made by model-prep; a parent picks int8, fp32, fp16)",
    )
    parser.add_argument(
        "--publish",
        default=DEFAULT_PUBLISH,
        metavar="ENDPOINT",
        help=f"PUB endpoint to bind, or 'none' (default {DEFAULT_PUBLISH})",
    )
    parser.add_argument("--output", "-o", metavar="FILE.jsonl", help="also write results here")
    parser.add_argument(
        "--fps",
        type=positive_float,
        metavar="F",
        help="classify F frames per second (files: by pts; live: by capture time)",
    )
    add_inference_arguments(parser)
    parser.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=0,
        metavar="N",
        help="decode at most N files at once, in a pool of N capture processes "
        "(default: the number of cores)",
    )
    parser.add_argument(
        "--wait-subscribers",
        type=int,
        default=0,
        metavar="N",
        help="hold results until N subscribers have connected to --publish",
    )
    parser.add_argument(
        "--subscriber-timeout",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="with --wait-subscribers: go on after S s without them, with a warning (default 30)",
    )
    parser.add_argument(
        "--mqtt",
        metavar="URL",
        help="also publish results to an MQTT broker: mqtt://[user:pass@]HOST[:PORT]/PREFIX "
        "(topics PREFIX/<stream>/result, PREFIX/<stream>/status, PREFIX/availability)",
    )
    parser.add_argument(
        "--mqtt-qos",
        type=int,
        choices=(0, 1),
        default=0,
        help="QoS of the MQTT messages (default 0)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz here (:PORT or PORT: 127.0.0.1)",
    )
    parser.add_argument(
        "--annotate",
        metavar="DIR",
        help="write DIR/<stream id>.mp4 per video file, and DIR/<stream id>/<stream id>-NNNNN.mp4 "
        "segments per live source: the classified frames with the top-1 label, score and stream "
        "time drawn on them (H.264)",
    )
    parser.add_argument(
        "--annotate-size",
        metavar="WxH",
        help="with --annotate: scale the annotated videos to WxH (default: the source's size)",
    )
    parser.add_argument(
        "--annotate-segment",
        type=float,
        metavar="S",
        help="with --annotate: start a new segment of a live source's video every S seconds of "
        "stream time (default 300); the one being written is named .mp4.part",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    parser.add_argument(
        "--print",
        "-p",
        action="store_true",
        dest="print_results",
        help="print each result's best class on stdout (one line per frame)",
    )
    live = parser.add_argument_group("live sources (defaults for every live source)")
    d = LiveOptions()
    live.add_argument(
        "--rtsp-transport",
        choices=("tcp", "udp"),
        default=d.transport,
        help=f"RTSP transport (default {d.transport})",
    )
    live.add_argument(
        "--open-timeout",
        type=positive_float,
        default=d.open_timeout_s,
        metavar="S",
        help=f"give up a connection attempt after S s (default {d.open_timeout_s:g})",
    )
    live.add_argument(
        "--stall-timeout",
        type=positive_float,
        default=d.stall_timeout_s,
        metavar="S",
        help="reconnect after S s without data, or without a frame once frames came "
        f"(the first keyframe may take longer) (default {d.stall_timeout_s:g})",
    )
    live.add_argument(
        "--backoff-max",
        type=positive_float,
        default=d.backoff_max_s,
        metavar="S",
        help="longest wait between reconnect attempts; waits start at "
        f"{d.backoff_initial_s:g} s and double (default {d.backoff_max_s:g})",
    )


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    publish = publish_endpoint(args.publish)
    live = LiveOptions(
        transport=args.rtsp_transport,
        open_timeout_s=args.open_timeout,
        stall_timeout_s=args.stall_timeout,
        backoff_max_s=args.backoff_max,
        backoff_initial_s=min(LiveOptions().backoff_initial_s, args.backoff_max),
    )
    sources: list = list(args.sources)
    if args.config:
        sources += load_sources_file(args.config, base=live)
    if not sources:
        raise UserError("no sources: give SOURCE arguments or --config FILE.toml")
    return PipelineConfig(
        sources=sources,
        model=args.model,
        publish=publish,
        output=args.output,
        fps=args.fps,
        wait_subscribers=args.wait_subscribers,
        subscriber_timeout_s=args.subscriber_timeout,
        jobs=args.jobs,
        live=live,
        **inference_options(args),
        metrics=args.metrics,
        mqtt=args.mqtt,
        mqtt_qos=args.mqtt_qos,
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    if args.annotate_size and not args.annotate:
        raise UserError("--annotate-size needs --annotate DIR")
    if args.annotate_segment is not None and not args.annotate:
        raise UserError("--annotate-segment needs --annotate DIR")
    annotator = None
    if args.annotate:  # imported only when asked for: nothing of it runs otherwise
        from stream.ops.annotate import parse_size
        from stream.ops.annotate_live import DEFAULT_SEGMENT_S, Annotation, segment_seconds

        size = parse_size(args.annotate_size) if args.annotate_size else None
        segment = args.annotate_segment
        segment_s = segment_seconds(DEFAULT_SEGMENT_S if segment is None else segment)
        annotator = Annotation(args.annotate, config.specs, size, segment_s, config.transport)
        config.annotate = annotator.link
    pipeline = Pipeline(config)
    progress = Progress(sys.stderr, enabled=not args.no_progress)
    try:
        callbacks = result_callbacks(args.print_results, progress, annotator)
        pipeline.run(progress=progress, **callbacks)
    except PipelineError as exc:
        progress.clear()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1 if annotator is None else max(1, finish_annotation(annotator, pipeline))
    except UserError:
        progress.clear()
        if annotator is not None:
            annotator.cancel()
        raise
    progress.clear()
    summary = pipeline.summary
    assert summary is not None
    print_summary(summary, pipeline, sys.stderr)
    code = summary.exit_code
    if annotator is not None:
        code = max(code, finish_annotation(annotator, pipeline))
    return code


def result_callbacks(
    print_results: bool, progress: Progress, annotator: Any | None
) -> dict[str, Callable[..., None] | None]:
    """`on_result` / `on_stream_end` for `Pipeline.run`: None when nothing needs results, so
    the pipeline does not deliver them to this process at all."""
    printer = None
    if print_results:

        def printer(record: dict) -> None:
            progress.clear()
            print(result_line(record), flush=True)

    if annotator is None:
        return {"on_result": printer}
    if printer is None:
        return {"on_result": annotator.on_result, "on_stream_end": annotator.on_stream_end}

    def both(record: dict) -> None:
        printer(record)
        annotator.on_result(record)

    return {"on_result": both, "on_stream_end": annotator.on_stream_end}


def finish_annotation(annotator: Any, pipeline: Pipeline) -> int:
    """Wait for the annotated videos still being written; their cost on a line (files, live).
    1 if one could not be written."""
    stages = pipeline.summary.stages if pipeline.summary is not None else {}
    lines, errors = annotator.finish(stages)
    for line in lines:
        print(f"{PROG}: {line}", file=sys.stderr)
    for problem in errors:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
    return 1 if errors else 0
