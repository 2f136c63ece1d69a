"""atomic_write: the file appears complete under its final name, or not at all."""

import os
import subprocess
import sys

import pytest

from tinynorm.files import atomic_write


def test_a_finished_write_replaces_the_file(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    with atomic_write(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_new_file_gets_ordinary_permissions(tmp_path):
    path = tmp_path / "out.bin"
    with atomic_write(path) as f:
        f.write(b"x")
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_removes_parts_that_killed_writers_left(tmp_path):
    """A process killed in the middle of a write (no chance to clean up) leaves its .part file;
    the next failed write of the same path removes it, but not a live writer's file."""
    path = tmp_path / "model.ckpt"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True
    )
    assert killed.returncode == 9, killed.stderr
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".model.ckpt.") and left[0].endswith(".part")
    live = tmp_path / f".model.ckpt.{os.getpid()}.inprogress.part"
    live.write_bytes(b"another writer of ours, still running")
    other = tmp_path / ".other.ckpt.1.x.part"
    other.write_bytes(b"")
    with pytest.raises(ValueError), atomic_write(path) as f:
        f.write(b"half")
        raise ValueError("bad state")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


KILLED_WRITER = """
import os, sys
from tinynorm.files import atomic_write
with atomic_write(sys.argv[1]) as f:
    f.write(b"x" * 100_000)
    f.flush()
    os._exit(9)  # as SIGKILL or a power cut would: no cleanup runs
"""
