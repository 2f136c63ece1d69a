"""atomic_write: the file appears complete under its final name, or not at all."""

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
