"""The one atomic writer: a finished write replaces the destination, a failed one leaves it untouched."""

from __future__ import annotations

import os

import pytest

from fastblt.graphs.atomic import atomic_dir, atomic_file


def _tree(root):
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_finished_write_replaces_the_old_directory_whole(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with atomic_dir(dest) as tmp:
        assert tmp.parent == tmp_path and tmp != dest
        (tmp / "new.txt").write_text("new")
        assert _tree(dest) == {"old.txt": "old"}  # readers see the old version until the swap
    assert _tree(dest) == {"new.txt": "new"}
    assert os.stat(dest).st_mode & 0o777 == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_error_inside_leaves_the_old_directory_and_no_temp_dir(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError, match="disk full"), atomic_dir(dest) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("disk full")
    assert _tree(dest) == {"keep.txt": "keep"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_interrupted_first_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "a" / "out") as tmp:
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in (tmp_path / "a").iterdir()] == []


def test_start_from_existing_edits_a_copy(tmp_path):
    dest = tmp_path / "bundle"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "a.txt").write_text("a")
    with pytest.raises(ValueError), atomic_dir(dest, start_from_existing=True) as tmp:
        (tmp / "sub" / "a.txt").write_text("changed")
        raise ValueError
    assert _tree(dest) == {"sub/a.txt": "a"}
    with atomic_dir(dest, start_from_existing=True) as tmp:
        assert _tree(tmp) == {"sub/a.txt": "a"}
        (tmp / "b.txt").write_text("b")
    assert _tree(dest) == {"sub/a.txt": "a", "b.txt": "b"}
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_atomic_file_replaces_or_keeps_the_old_file(tmp_path):
    path = atomic_file(tmp_path / "r" / "report.json", "first")
    assert path.read_text() == "first" and os.stat(path).st_mode & 0o777 == 0o644
    atomic_file(path, b"second")
    assert path.read_text() == "second"
    with pytest.raises(TypeError):
        atomic_file(path, 3)  # type: ignore[arg-type]  # the write fails half-way
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
