"""Atomic writes honour the process umask: a team shares an experiment folder."""

import os
import stat

import pytest

from core import files


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring the previous one after it."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(
    "mask, dir_mode, file_mode",
    [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664), (0o077, 0o700, 0o600)],
    ids=["umask-022", "umask-002", "umask-077"],
)
def test_written_folders_and_files_get_the_umask_permissions(tmp_path, umask, mask, dir_mode, file_mode):
    umask(mask)
    with files.atomic_dir(tmp_path / "data") as tmp:
        (tmp / "part.txt").write_text("x")
    files.write_json({"a": 1}, tmp_path / "report.json")
    files.save_npy(tmp_path / "x.npy", [1.0])
    assert mode(tmp_path / "data") == dir_mode  # tempfile.mkdtemp made 0700 whatever the umask
    assert mode(tmp_path / "report.json") == file_mode  # tempfile.mkstemp made 0600
    assert mode(tmp_path / "x.npy") == file_mode
    assert mode(files.temp_dir(tmp_path, ".cache.tmp-")) == dir_mode


def test_temporary_names_are_fresh_and_nothing_is_left_behind(tmp_path):
    a, b = files.temp_dir(tmp_path, ".x.tmp-"), files.temp_dir(tmp_path, ".x.tmp-")
    assert a != b and a.name.startswith(".x.tmp-")
    with pytest.raises(RuntimeError), files.atomic_dir(tmp_path / "out"):
        raise RuntimeError("killed half way")
    files.write_json([1], tmp_path / "r.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, b.name, "r.json"])
