#!/usr/bin/python3
"""A real RTSP server for tests: GStreamer's gst-rtsp-server serving an H.264 MP4 (looped, no
re-encode) or a live test pattern, with stall/resume on SIGUSR1/SIGUSR2.

Runs under Debian's /usr/bin/python3 (python3-gi, gir1.2-gst-rtsp-server-1.0); the project's venv
cannot import gi, so tests start this as a subprocess (see tests/rtsp/conftest.py).

    /usr/bin/python3 tests/rtsp/server.py --port 8554 --path /cam --file clip.mp4
    /usr/bin/python3 tests/rtsp/server.py --port 0 --pattern 640x360@25 --user u --password p

Prints `READY rtsp://127.0.0.1:PORT/PATH` on stdout once listening (PORT is the bound port, so
`--port 0` picks a free one). SIGTERM/SIGINT exit 0. SIGUSR1 stalls the stream (no more frames,
RTSP sessions and TCP connections stay open); SIGUSR2 resumes it with fresh timestamps, as a camera
that froze would.

The file is demuxed once into memory and fed to an `appsrc` (is-live) at its frame rate, with
timestamps that keep increasing across loops and stalls. h264parse repeats SPS/PPS before every
IDR so clients can join at any keyframe.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from dataclasses import dataclass

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# SPS/PPS go in-band before every IDR access unit, so a client can join at any keyframe. It is
# h264parse that inserts them: rtph264pay's own config-interval inserts them before every IDR
# *slice*, which splits multi-slice frames (x264 with threads) in two for FFmpeg's parser.
PAYLOADER = (
    "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au "
    "! rtph264pay name=pay0 pt=96 config-interval=0"
)


@dataclass
class Packet:
    """One H.264 access unit in decode order, as demuxed from the file."""

    data: bytes
    pts: int
    """Presentation time in ns, relative to the first presented frame."""
    keyframe: bool


@dataclass
class Clip:
    """A whole H.264 stream held in memory, ready to be pushed in a loop."""

    caps: Gst.Caps
    packets: list[Packet]
    frame_ns: int
    """Duration of one frame in ns (from the frame rate)."""
    reorder_ns: int
    """Added to every pts so that pts >= dts holds with B-frames."""


def read_clip(path: str, timeout_s: float = 30.0) -> Clip:
    """Demux the H.264 track of an MP4 into memory (no decoding); raises on any error."""
    pipeline = Gst.parse_launch(
        "filesrc name=file ! qtdemux ! video/x-h264 "
        "! appsink name=sink sync=false emit-signals=false max-buffers=0"
    )
    pipeline.get_by_name("file").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    bus = pipeline.get_bus()
    raw: list[tuple[bytes, int, bool, int]] = []
    caps = None
    pipeline.set_state(Gst.State.PLAYING)
    try:
        waited = 0.0
        while not sink.get_property("eos"):
            msg = bus.pop_filtered(Gst.MessageType.ERROR)
            if msg is not None:
                err, debug = msg.parse_error()
                raise RuntimeError(f"{path}: {err.message} ({debug})")
            sample = sink.emit("try-pull-sample", Gst.SECOND // 10)
            if sample is None:
                waited += 0.1
                if waited > timeout_s:
                    raise RuntimeError(f"{path}: no end of stream after {timeout_s} s")
                continue
            buf = sample.get_buffer()
            caps = caps or sample.get_caps()
            ok, info = buf.map(Gst.MapFlags.READ)
            if not ok:
                raise RuntimeError(f"{path}: cannot map buffer")
            try:
                data = bytes(info.data)
            finally:
                buf.unmap(info)
            keyframe = not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)
            raw.append((data, buf.pts, keyframe, buf.duration))
    finally:
        pipeline.set_state(Gst.State.NULL)
    if not raw or caps is None:
        raise RuntimeError(f"{path}: no H.264 video track")
    structure = caps.get_structure(0)
    ok, num, den = structure.get_fraction("framerate")
    if ok and num > 0:
        frame_ns = Gst.util_uint64_scale(Gst.SECOND, den, num)
    else:
        frame_ns = raw[0][3] if raw[0][3] != Gst.CLOCK_TIME_NONE else Gst.SECOND // 25
    first_pts = min(p for _, p, _, _ in raw)
    packets = [Packet(data, pts - first_pts, key) for data, pts, key, _ in raw]
    # dts of packet i is i * frame_ns; B-frames show earlier than they decode, so shift all pts.
    reorder_ns = max(0, max(i * frame_ns - p.pts for i, p in enumerate(packets)))
    return Clip(caps, packets, frame_ns, reorder_ns)


class Stall:
    """Process-wide stall switch, flipped by SIGUSR1/SIGUSR2, observed by every source."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self.generation = 0
        """Counts resumes, so a feeder can tell it must re-base its timestamps."""

    @property
    def stalled(self) -> bool:
        return not self._running.is_set()

    def stall(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        if not self._running.is_set():
            self.generation += 1
            self._running.set()

    def wait_running(self, timeout: float) -> bool:
        return self._running.wait(timeout)


class ClipFeeder:
    """Pushes a Clip into one media's live appsrc at the clip's frame rate, in a thread."""

    def __init__(
        self, appsrc: Gst.Element, clip: Clip, stall: Stall, loop: bool, start: int = 0
    ) -> None:
        self.appsrc = appsrc
        self.clip = clip
        self.stall = stall
        self.loop = loop
        self.start_frame = start
        """Packet (in decode order) the media starts at: > 0 joins the clip mid-GOP."""
        self._playing = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clip-feeder", daemon=True)
        appsrc.connect("need-data", lambda *_: self._playing.set())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._playing.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _now(self) -> int:
        """Running time of the media pipeline in ns."""
        clock = self.appsrc.get_clock()
        return clock.get_time() - self.appsrc.get_base_time()

    def _run(self) -> None:
        # appsrc asks for data only once its live pipeline is PLAYING, i.e. a clock is running.
        self._playing.wait()
        clip, n = self.clip, len(self.clip.packets)
        generation = self.stall.generation
        i = self.start_frame % n
        base = self._now() - i * clip.frame_ns
        while not self._stop.is_set():
            if self.stall.stalled and not self.stall.wait_running(0.1):
                continue
            if generation != self.stall.generation:
                # Resumed after a stall: carry on from the next frame, stamped "now".
                generation = self.stall.generation
                base = self._now() - i * clip.frame_ns
            if i == n and not self.loop:
                self.appsrc.emit("end-of-stream")
                return
            dts = base + i * clip.frame_ns
            delay = dts - self._now()
            if delay > 0 and self._stop.wait(delay / Gst.SECOND):
                return
            if self.stall.stalled:
                continue
            packet = clip.packets[i % n]
            buf = Gst.Buffer.new_wrapped(packet.data)
            buf.dts = dts
            buf.pts = base + (i // n) * n * clip.frame_ns + packet.pts + clip.reorder_ns
            buf.duration = clip.frame_ns
            if not packet.keyframe:
                buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
            if self.appsrc.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                return  # flushing or shut down: the media is going away
            i += 1


class Factory(GstRtspServer.RTSPMediaFactory):
    """Builds one shared media: a looped clip via appsrc, or a live videotestsrc + x264enc."""

    def __init__(self, args: argparse.Namespace, stall: Stall) -> None:
        super().__init__()
        self.args = args
        self.stall = stall
        self.clip = read_clip(args.file) if args.file else None
        if self.clip is not None:
            self.set_launch(
                f"( appsrc name=src is-live=true format=time do-timestamp=false ! {PAYLOADER} )"
            )
        else:
            width, height, fps = args.pattern
            self.set_launch(
                "( videotestsrc name=src is-live=true pattern=ball "
                f"! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 "
                f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
                f"! {PAYLOADER} )"
            )
        self.set_shared(True)
        self.connect("media-configure", self._on_media_configure)

    def _on_media_configure(self, _factory, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_by_name("src")
        if self.clip is not None:
            src.set_property("caps", self.clip.caps)
            feeder = ClipFeeder(
                src, self.clip, self.stall, loop=not self.args.once, start=self.args.start_frame
            )
            media.connect("unprepared", lambda *_: feeder.stop())
            feeder.start()
        else:
            # Drop raw frames before the encoder: the pattern keeps its real-time clock, the
            # encoder just sees a gap, and nothing bursts out on resume.
            def drop_when_stalled(_pad, _info):
                return Gst.PadProbeReturn.DROP if self.stall.stalled else Gst.PadProbeReturn.OK

            src.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, drop_when_stalled)


def parse_pattern(text: str) -> tuple[int, int, int]:
    """'640x360@25' -> (640, 360, 25)."""
    m = re.fullmatch(r"(\d+)x(\d+)@(\d+)", text)
    if not m or 0 in (w := int(m[1]), h := int(m[2]), f := int(m[3])):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT@FPS like 640x360@25, got {text!r}")
    return w, h, f


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8554, help="TCP port; 0 picks a free one")
    parser.add_argument("--path", default="/stream", help="mount path, e.g. /cam")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="H.264 MP4 to serve (looped unless --once)")
    source.add_argument("--pattern", type=parse_pattern, help="live test pattern WxH@FPS")
    parser.add_argument("--once", action="store_true", help="play --file once, then end")
    parser.add_argument(
        "--start-frame",
        type=int,
        default=0,
        metavar="N",
        help="start every new media at the clip's packet N (decode order), e.g. just after a "
        "keyframe, so a client joins mid-GOP and waits for the next keyframe",
    )
    parser.add_argument("--user", help="require RTSP basic auth with this user")
    parser.add_argument("--password", default="", help="password for --user")
    args = parser.parse_args(argv)
    if not args.path.startswith("/"):
        args.path = "/" + args.path
    if args.once and not args.file:
        parser.error("--once needs --file")
    if args.start_frame and not args.file:
        parser.error("--start-frame needs --file")
    return args


def add_basic_auth(server: GstRtspServer.RTSPServer, factory: Factory, user: str, pw: str) -> None:
    """Only `user:pw` may see or build the media; anyone else gets 401 Unauthorized."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "tester")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, pw), token)
    server.set_auth(auth)
    factory.add_role_from_structure(
        Gst.Structure.new_from_string(
            "tester, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Gst.init(None)
    stall = Stall()
    try:
        factory = Factory(args, stall)
    except (RuntimeError, GLib.Error) as exc:
        print(f"server.py: {exc}", file=sys.stderr)
        return 2

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.path, factory)
    if args.user:
        add_basic_auth(server, factory, args.user, args.password)

    loop = GLib.MainLoop()

    def on_signal(signum: int) -> bool:
        if signum == signal.SIGUSR1:
            stall.stall()
            print("STALLED", flush=True)
        elif signum == signal.SIGUSR2:
            stall.resume()
            print("RESUMED", flush=True)
        else:
            loop.quit()
        return GLib.SOURCE_CONTINUE

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, on_signal, signum)

    if not server.attach(None):  # binds and listens now, so READY below is true
        print(f"server.py: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 2
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
