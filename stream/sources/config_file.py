"""A TOML file listing the sources of a run, with per-source settings (`ovstream run --config`).

    # cams.toml
    [defaults]                  # optional; every key a source may have except name, url
    fps = 2                     # classify 2 frames a second
    stall_timeout = 5           # seconds without data (or frames) before reconnecting

    [[source]]
    name = "front"              # stream id (default: the URL's last path segment)
    url = "rtsp://admin:${FRONT_PASSWORD}@10.0.0.5/stream1"   # ${VAR} comes from the environment
    transport = "udp"

    [[source]]
    name = "desk"
    url = "/dev/video0"
    options = { video_size = "640x480", input_format = "mjpeg" }   # passed to FFmpeg as given

Keys of a source (times in seconds): `name`, `url` (required), `live` (true/false; default: from
the URL), `fps`, `transport` (tcp|udp), `open_timeout`, `read_timeout`, `stall_timeout`,
`backoff_initial`, `backoff_max`, `backoff_factor`, `reconnect`, `options`. A source's own key
wins over `[defaults]`, which wins over the command line, which wins over the built-in defaults.
Every problem in the file is reported, one line each (`ConfigError.problems`).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stream.errors import UserError
from stream.sources.live_options import LiveOptions, default_stream_id
from stream.sources.spec import RESERVED_PREFIX, SourceSpec

OPTION_KEYS = {
    "transport": "transport",
    "open_timeout": "open_timeout_s",
    "read_timeout": "read_timeout_s",
    "stall_timeout": "stall_timeout_s",
    "backoff_initial": "backoff_initial_s",
    "backoff_max": "backoff_max_s",
    "backoff_factor": "backoff_factor",
    "reconnect": "reconnect",
    "options": "options",
}
"""TOML key -> LiveOptions field."""
SOURCE_KEYS = ("name", "url", "live", "fps", *OPTION_KEYS)
TOP_KEYS = ("defaults", "source")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(UserError):
    """A sources file with problems; `problems` has one line for each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_sources_file(
    path: str | os.PathLike, base: LiveOptions | None = None, environ: dict[str, str] | None = None
) -> list[SourceSpec]:
    """The sources listed in a TOML file; raises ConfigError listing every problem."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{name}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}"]
        ) from None
    return parse_sources_toml(text, name, base, environ)


def parse_sources_toml(
    text: str,
    name: str = "<config>",
    base: LiveOptions | None = None,
    environ: dict[str, str] | None = None,
) -> list[SourceSpec]:
    """The sources of a TOML document (see the module docstring)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: not valid TOML: {exc}"]) from None
    env = os.environ if environ is None else environ
    problems: list[str] = []
    for key in data:
        if key not in TOP_KEYS:
            problems.append(
                f"{name}: unknown table or key {key!r} (expected [defaults] and [[source]])"
            )
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(f"{name}: [defaults] must be a table, got {type(defaults).__name__}")
        defaults = {}
    for key in ("name", "url"):
        if key in defaults:
            problems.append(f"{name}: [defaults] cannot set {key!r} (it is per source)")
    sources = data.get("source")
    if sources is None:
        problems.append(f"{name}: no sources (add a [[source]] table with a url)")
        sources = []
    elif not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
        problems.append(f"{name}: 'source' must be [[source]] tables")
        sources = []
    specs: list[SourceSpec] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(sources, 1):
        merged = {**{k: v for k, v in defaults.items() if k not in ("name", "url")}, **table}
        label = f"{name}: source {i}" + (
            f" ({table['name']!r})" if isinstance(table.get("name"), str) else ""
        )
        spec, errs = _source(merged, label, base or LiveOptions(), env)
        problems.extend(errs)
        if spec is not None:
            if spec.stream_id in seen:
                problems.append(
                    f"{label}: name {spec.stream_id!r} already used by source "
                    f"{seen[spec.stream_id]}"
                )
            seen.setdefault(spec.stream_id, i)
            specs.append(spec)
    if problems:
        raise ConfigError(problems)
    return specs


def _source(
    table: dict[str, Any], label: str, base: LiveOptions, env: Any
) -> tuple[SourceSpec | None, list[str]]:
    """One [[source]] table -> (SourceSpec or None, problems)."""
    problems = [
        f"{label}: unknown key {key!r} (known: {', '.join(SOURCE_KEYS)})"
        for key in table
        if key not in SOURCE_KEYS
    ]
    url = table.get("url")
    if not isinstance(url, str) or not url.strip():
        problems.append(f"{label}: 'url' is required (a file path, a stream URL or /dev/videoN)")
        url = None
    else:
        missing = [v for v in ENV_REF.findall(url) if v not in env]
        if missing:
            problems.append(
                f"{label}: url uses ${{{missing[0]}}}, which is not set in the environment"
            )
        url = ENV_REF.sub(lambda m: env.get(m.group(1), ""), url)
    stream_id = table.get("name")
    if stream_id is not None and (
        not isinstance(stream_id, str) or not stream_id.strip() or "/" in stream_id
    ):
        problems.append(
            f"{label}: 'name' must be a non-empty string without '/', got {stream_id!r}"
        )
    elif isinstance(stream_id, str) and stream_id.startswith(RESERVED_PREFIX):
        problems.append(f"{label}: 'name' must not start with {RESERVED_PREFIX!r} (reserved)")
    live = table.get("live")
    if live is not None and not isinstance(live, bool):
        problems.append(f"{label}: 'live' must be true or false, got {live!r}")
    fps = table.get("fps")
    if fps is not None and (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float))
        or not (fps > 0 and math.isfinite(fps))
    ):
        problems.append(f"{label}: 'fps' must be a positive number, got {fps!r}")
    fields = asdict(base)
    fields.update({OPTION_KEYS[k]: v for k, v in table.items() if k in OPTION_KEYS})
    try:
        options = LiveOptions.__new__(LiveOptions)
        options.__dict__.update(fields)
        option_problems = options.problems()
    except TypeError as exc:
        option_problems = [str(exc)]
    for problem in option_problems:  # name the TOML keys, not the dataclass fields
        for key, field_name in OPTION_KEYS.items():
            problem = re.sub(rf"\b{field_name}\b", key, problem)
        problems.append(f"{label}: {problem}")
    if problems or url is None:
        return None, problems
    spec = SourceSpec(
        stream_id=stream_id or default_stream_id(url.split("?", 1)[0].rstrip("/")),
        url=url,
        live=live,
        fps=float(fps) if fps is not None else None,
        options=LiveOptions(**fields),
    )
    return spec, []
