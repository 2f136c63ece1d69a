"""Atomic file writes: a file appears under its final name complete, or not at all."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | PathLike[str], mode: str = "wb", **open_args) -> Iterator[IO]:
    """Write to a temporary file beside `path`, and rename it to `path` (atomic on one file
    system) only when the block ends without an error, after flushing it to disk. On any error,
    Ctrl-C included, the temporary file is removed and `path` is untouched.

    The temporary file is `.<name>.<pid>.<random>.part`; when a write fails, those that earlier
    processes left for the same `path` (killed before they could clean up) are removed too.

        with atomic_write("results.csv", "w") as f:
            f.write(text)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=".part")
    try:
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the old file's mode, or the usual one
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        remove_stale_parts(target)
        raise


def remove_stale_parts(path: str | PathLike[str]) -> list[Path]:
    """Delete the temporary files of `atomic_write(path)` whose writing process has ended;
    returns them. A live process's file (another writer's, in progress) is left alone."""
    target = Path(path)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[^.]+\.part")
    removed = []
    for part in target.parent.glob(f".{glob.escape(target.name)}.*.part"):
        match = pattern.fullmatch(part.name)
        if match and not _process_alive(int(match[1])):
            part.unlink(missing_ok=True)
            removed.append(part)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # someone else's process, or no pid of ours
        return True
    return True
