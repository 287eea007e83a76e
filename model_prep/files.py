"""Output folders that appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stream.errors import UserError


@contextlib.contextmanager
def staged_output(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success its entries replace target's.

    On any error the temporary folder is removed and `target` is left as it was, so a failed run
    never leaves a half-written model behind.
    """
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.tmp-"))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should not be
    except OSError as exc:
        raise UserError(f"cannot write to output folder {target}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if not target.exists():
            tmp.rename(target)
            return
        if not target.is_dir():
            raise UserError(f"output {target} exists and is not a folder")
        for entry in tmp.iterdir():
            dest = target / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            entry.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def folder_size_mb(folder: Path, pattern: str = "model.bin") -> float:
    return sum(p.stat().st_size for p in Path(folder).glob(pattern)) / 1e6
