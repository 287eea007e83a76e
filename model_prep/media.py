"""Frames for calibration and validation: image files and evenly sampled video frames.

Every frame goes through `stream.geometry.prepare`, the one geometric policy the runtime uses, and
comes out as the u8 BGR HxWx3 array the IR takes (normalisation is inside the IR).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from stream.errors import UserError
from stream.geometry import Geometry, prepare

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".flv"}
DEFAULT_FRAMES_PER_VIDEO = 30
T = TypeVar("T")


@dataclass
class FrameSet:
    """Prepared model inputs and where each came from."""

    frames: list[np.ndarray] = field(default_factory=list)
    """u8 BGR HxWx3 arrays at the model's input size."""
    origins: list[str] = field(default_factory=list)
    """`path` for an image, `path#frame` for a video frame; one per frame."""
    used: list[str] = field(default_factory=list)
    """Files that gave at least one frame."""
    skipped: list[str] = field(default_factory=list)
    """Files that could not be read as an image or a video."""

    def array(self) -> np.ndarray:
        return np.stack(self.frames) if self.frames else np.zeros((0, 0, 0, 3), np.uint8)

    def add(self, path: Path, geometry: Geometry, frames_per_video: int) -> int:
        """Read an image or sample a video, prepare its frames; returns how many were added."""
        got = _read_any(path, frames_per_video)
        (self.used if got else self.skipped).append(str(path))
        for origin, frame in got:
            self.frames.append(prepare(frame, geometry))
            self.origins.append(origin)
        return len(got)


def progress(items: Sequence[T], description: str) -> Iterator[T]:
    """Iterate with a progress bar on stderr (rich, as NNCF's own bars) when it is a terminal."""
    if not sys.stderr.isatty():
        log.info("%s: %d item(s)", description, len(items))
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    console = Console(file=sys.stderr)
    yield from track(items, description=description, console=console, transient=False)


def find_media(paths: Sequence[Path], what: str = "calibration") -> list[Path]:
    """Files named directly plus every non-hidden file under named folders (sorted, recursive)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                )
            )
        else:
            raise UserError(f"{what} path not found: {path}")
    if not files:
        raise UserError(f"no {what} files found in {', '.join(map(str, paths))}")
    return files


def read_image(path: Path) -> np.ndarray | None:
    """A BGR u8 image, or None when the file is not an image OpenCV can decode."""
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return image if image is not None and image.size else None


def even_indices(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(total), centred in their slots (all if fewer)."""
    if total <= count:
        return list(range(total))
    return sorted({int((i + 0.5) * total / count) for i in range(count)})


def video_frames(path: Path, count: int) -> list[tuple[int, np.ndarray]]:
    """Up to `count` (index, BGR frame) pairs sampled evenly across a video; [] if not a video."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return []
            stream = container.streams.video[0]
            total = stream.frames
            if not total and stream.duration and stream.average_rate:
                total = int(stream.duration * stream.time_base * stream.average_rate)
            if total:
                wanted = set(even_indices(total, count))
                out = []
                for i, frame in enumerate(container.decode(stream)):
                    if i in wanted:
                        out.append((i, frame.to_ndarray(format="bgr24")))
                    if i >= max(wanted):
                        break
                return out
            # Unknown length: decode all, keep every frame only until sampled.
            all_frames = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
            return [(i, all_frames[i]) for i in even_indices(len(all_frames), count)]
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        log.debug("not a readable video: %s (%s)", path, exc)
        return []


def load_frames(
    files: Sequence[Path],
    geometry: Geometry,
    frames_per_video: int = DEFAULT_FRAMES_PER_VIDEO,
    description: str = "loading frames",
) -> FrameSet:
    """Read images, sample videos and prepare every frame; unreadable files are counted."""
    result = FrameSet()
    for path in progress(files, description):
        result.add(path, geometry, frames_per_video)
    return result


def _read_any(path: Path, frames_per_video: int) -> list[tuple[str, np.ndarray]]:
    image = None if path.suffix.lower() in VIDEO_SUFFIXES else read_image(path)
    if image is not None:
        return [(str(path), image)]
    return [(f"{path}#{i}", f) for i, f in video_frames(path, frames_per_video)]


def report_skipped(frames: FrameSet, what: str) -> None:
    """One warning line for skipped files; a UserError when nothing usable remains."""
    if not frames.frames:
        raise UserError(
            f"none of the {len(frames.skipped)} {what} files could be read as an image or a video "
            f"(e.g. {frames.skipped[0] if frames.skipped else '-'})"
        )
    if frames.skipped:
        print(
            f"warning: skipped {len(frames.skipped)} unreadable {what} file(s) "
            f"(e.g. {frames.skipped[0]}); using {len(frames.used)}",
            file=sys.stderr,
        )


# --- labelled folders -------------------------------------------------------------------------

WNID = re.compile(r"^n\d{8}$")


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def read_wnids(path: Path) -> list[str]:
    """WordNet ids in class order: one per line, first word (ImageNet's LOC_synset_mapping.txt)."""
    try:
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise UserError(f"cannot read WordNet id list {path}: {exc.strerror or exc}") from None
    if not ids or not all(WNID.match(i) for i in ids):
        raise UserError(f"{path} is not a WordNet id list (lines like 'n01440764 tench')")
    return ids


def class_index(name: str, labels: Sequence[str], wnids: Sequence[str] | None = None) -> int | None:
    """A folder name as a class id: an index (`281`, `281_tabby`), a WordNet id, or a label."""
    match = re.match(r"^(\d+)(?:[_\- ].*)?$", name)
    if match:
        index = int(match.group(1))
        return index if index < len(labels) else None
    if WNID.match(name):
        if wnids is None:
            return None
        return wnids.index(name) if name in wnids else None
    wanted = _norm(name)
    for i, label in enumerate(labels):
        if _norm(label) == wanted:
            return i
    return None


@dataclass
class Labelled:
    """A labelled validation set: prepared frames and their class ids."""

    frames: FrameSet
    targets: list[int]
    classes: dict[str, int]
    """Folder name -> class id."""


def labelled_folder(
    folder: Path,
    labels: Sequence[str],
    geometry: Geometry,
    wnids_file: Path | None = None,
    frames_per_video: int = DEFAULT_FRAMES_PER_VIDEO,
) -> Labelled:
    """Frames from `folder/<class>/...` where <class> is an index, a WordNet id or a label name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"validation folder not found: {folder}")
    wnids = read_wnids(wnids_file) if wnids_file else None
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise UserError(f"validation folder {folder} has no class sub-folders")
    classes: dict[str, int] = {}
    for sub in subdirs:
        index = class_index(sub.name, labels, wnids)
        if index is None:
            hint = " (WordNet ids need --wnids FILE)" if WNID.match(sub.name) and not wnids else ""
            raise UserError(
                f"validation class folder {sub.name!r} in {folder} is not a class index "
                f"(0-{len(labels) - 1}), WordNet id or label name of this model{hint}"
            )
        classes[sub.name] = index
    files: list[tuple[Path, int]] = []
    for sub in subdirs:
        files += [(p, classes[sub.name]) for p in find_media([sub], "validation")]
    frames = FrameSet()
    targets: list[int] = []
    for path, target in progress(files, "loading validation set"):
        targets += [target] * frames.add(path, geometry, frames_per_video)
    report_skipped(frames, "validation")
    return Labelled(frames, targets, classes)


def batches(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Each frame as a batch-1 NHWC tensor, as the IR takes it."""
    for frame in frames:
        yield frame[None]
