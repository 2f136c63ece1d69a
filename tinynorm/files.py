"""Atomic file writes: a file appears under its final name complete, or not at all."""

from __future__ import annotations

import contextlib
import os
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

        with atomic_write("model.ckpt") as f:
            pickle.dump(state, f)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
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
        raise
