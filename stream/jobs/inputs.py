"""Expand a batch job's INPUT arguments into a sorted list of files, each with its stream id.

An INPUT is a file, a folder (searched recursively for video files by extension), a glob pattern
(`clips/**/*.mp4`) or `@list.txt` (one path per line; a folder in it is searched too). The stream
id of a file is its path relative to the inputs' common folder (the folders given, and the
folders holding the files given), with `/` separators: it names the output file and is the
results' topic. Nothing is opened or probed here, only `stat`ed: start-up stays fast for tens of
thousands of inputs. A file that does not exist is kept (with `error` set) so the job records
it as failed; the others go on.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from stream.errors import UserError
from stream.wire.records import STATUS_TOPIC_PREFIX

RESERVED = STATUS_TOPIC_PREFIX.rstrip("/")

_EXTENSIONS = """
    .3g2 .3gp .asf .avi .divx .dv .f4v .flv .h264 .h265 .hevc .m2t .m2ts .m2v .m4v .mj2 .mjpeg
    .mjpg .mkv .mov .mp4 .mpeg .mpg .mts .mxf .nut .ogv .qt .rm .rmvb .ts .vob .webm .wmv .y4m
"""
VIDEO_EXTENSIONS = frozenset(_EXTENSIONS.split())
"""Extensions (lower case) a folder search takes as video files; files named directly, by a
glob or in a list are taken whatever their extension."""

GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """One file of the job, as found at start-up."""

    path: str
    """Absolute path (not resolved through links)."""
    stream_id: str
    """Path relative to the inputs' common folder, `/`-separated: output name and topic."""
    size: int | None
    """Size in bytes; None when the file cannot be `stat`ed."""
    mtime_ns: int | None
    """Modification time in ns; None when the file cannot be `stat`ed."""
    error: str | None = None
    """Why the file cannot be read (no such file, not a file), found without opening it."""


@dataclass(frozen=True)
class Inputs:
    """The files of a job and the folder their stream ids are relative to."""

    files: list[InputFile]
    root: str
    warnings: list[str]
    """Inputs that gave nothing (an empty folder, a pattern that matched nothing)."""


def is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def walk_videos(folder: str) -> Iterator[str]:
    """Video files under `folder`, recursively (hidden folders and files skipped)."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append(entry.path)
                elif entry.is_file() and is_video_name(entry.name):
                    yield entry.path
            except OSError:
                continue


def read_list(list_file: str) -> list[str]:
    """The paths of an `@list.txt`: one a line, blank lines and `#` comments skipped; relative
    paths are relative to the list's folder."""
    try:
        with open(list_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read list @{list_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"list @{list_file} is not UTF-8 text") from None
    base = os.path.dirname(os.path.abspath(list_file))
    paths = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            paths.append(os.path.join(base, os.path.expanduser(text)))
    return paths


def _expand(arg: str, roots: list[str], found: list[str], warnings: list[str]) -> None:
    """Add the files of one path or pattern to `found`, and the folder it stands for to
    `roots`."""
    path = os.path.abspath(os.path.expanduser(arg))
    if os.path.isdir(path):
        before = len(found)
        roots.append(path)
        found.extend(walk_videos(path))
        if len(found) == before:
            warnings.append(f"no video files in folder {arg}")
    elif any(c in arg for c in GLOB_CHARS) and not os.path.exists(path):
        matches = sorted(glob.glob(path, recursive=True))
        files = [m for m in matches if not os.path.isdir(m)]
        for m in matches:
            if os.path.isdir(m):
                roots.append(m)
                files.extend(walk_videos(m))
        if not files:
            warnings.append(f"no files match {arg}")
        found.extend(files)
    else:
        found.append(path)


def expand_inputs(args: Iterable[str]) -> Inputs:
    """Files, folders, glob patterns and `@list.txt` -> sorted unique files with stream ids."""
    roots: list[str] = []
    found: list[str] = []
    warnings: list[str] = []
    for arg in args:
        if arg.startswith("@") and len(arg) > 1:
            for path in read_list(arg[1:]):
                if os.path.isdir(path):
                    _expand(path, roots, found, warnings)
                else:
                    found.append(path)  # a list line is a path, never a pattern
        else:
            _expand(arg, roots, found, warnings)
    unique = sorted(set(map(os.path.normpath, found)))
    if not unique:
        detail = f": {'; '.join(warnings)}" if warnings else ""
        raise UserError(f"no input files{detail}")
    folders = {os.path.dirname(p) for p in unique}
    root = os.path.commonpath([*roots, *folders])
    files = [_stat(path, root) for path in unique]
    return Inputs(files=files, root=root, warnings=warnings)


def _stat(path: str, root: str) -> InputFile:
    stream_id = Path(os.path.relpath(path, root)).as_posix()
    if stream_id.startswith(RESERVED):
        reason = f"its path {stream_id} starts with {RESERVED!r}, reserved for status events"
        return InputFile(path, stream_id, None, None, reason)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return InputFile(path, stream_id, None, None, f"no such file: {path}")
    except OSError as exc:
        return InputFile(path, stream_id, None, None, f"cannot read {path}: {exc.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return InputFile(path, stream_id, st.st_size, st.st_mtime_ns, f"not a file: {path}")
    return InputFile(path, stream_id, st.st_size, st.st_mtime_ns)
