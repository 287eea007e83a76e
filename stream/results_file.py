"""The JSON Lines results file (`--output`): refuse a path whose truncation would destroy a video.

Opening the file for writing truncates it, before a single frame is read; an output path that
is one of the inputs (also through a symlink or a hard link) or any other video would be
destroyed. An existing results file (or any other non-video file) is replaced.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

VIDEO_SUFFIXES = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".ts",
        ".mts",
        ".m2ts",
        ".flv",
        ".mpg",
        ".mpeg",
        ".wmv",
        ".3gp",
        ".h264",
        ".264",
        ".h265",
        ".265",
        ".hevc",
        ".ivf",
        ".y4m",
        ".mjpeg",
    ]
)


def looks_like_video(head: bytes) -> bool:
    """True if the first bytes of a file are those of a video container or elementary stream."""
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide")  # MP4, MOV, 3GP
        or head.startswith(b"\x1a\x45\xdf\xa3")  # Matroska, WebM
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or head.startswith((b"FLV\x01", b"DKIF", b"YUV4MPEG2", b"\x30\x26\xb2\x75"))  # ASF/WMV
        or head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"))  # MPEG program/video
        or head.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))  # H.264/HEVC Annex B
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)  # MPEG-TS
    )


def output_problem(output: str | os.PathLike, inputs: Iterable[str]) -> str | None:
    """Why `output` must not be opened for writing, or None. `inputs`: the run's sources
    (paths; URLs are ignored)."""
    path = Path(output)
    try:
        st = path.stat()
    except OSError:
        return None  # not there (or not reachable): opening it will say what is wrong
    for source in inputs:
        if "://" in source:
            continue
        try:
            src = os.stat(source)
        except OSError:
            continue
        if (src.st_dev, src.st_ino) == (st.st_dev, st.st_ino):
            return f"--output {output} is the input {source}: writing results would destroy it"
    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            head = f.read(200)
    except OSError:
        return None
    if looks_like_video(head) or (path.suffix.lower() in VIDEO_SUFFIXES and st.st_size > 0):
        return f"--output {output} is a video: writing results would destroy it; give a .jsonl path"
    return None
