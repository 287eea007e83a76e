"""RTSP tests run against a real GStreamer RTSP server; see tests/rtsp/fixtures.py."""

from tests.rtsp.fixtures import rtsp_server  # noqa: F401
