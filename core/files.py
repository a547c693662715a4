"""Atomic writes and inter-process locks: a killed stage never leaves a half-written output.

Every stage writes through these helpers, so a rerun either finds a finished file or none. What
they create gets the permissions the process umask gives (as ``mkdir`` and ``open`` would), not
``tempfile``'s private 0700/0600: an experiment folder is often shared by a team.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Attempts at a fresh random name before giving up (tempfile's own limit): a clash needs another
# writer that drew the same 8 random hex digits in the same folder.
_TEMP_ATTEMPTS = 10_000


def _fresh(parent: Path, prefix: str, create: Callable[[Path], None]) -> Path:
    """``create`` a new path ``parent/prefix<random>`` that did not exist (``tempfile``'s
    exclusive creation, without its owner-only permissions)."""
    for _ in range(_TEMP_ATTEMPTS):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            create(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}* in {parent}")


def temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new empty folder in ``parent``, mode 0777 less the umask (``tempfile.mkdtemp`` gives 0700)."""
    return _fresh(Path(parent), prefix, lambda p: p.mkdir(0o777))


def _temp_file(parent: Path, prefix: str) -> Path:
    """A new empty file in ``parent``, mode 0666 less the umask (``tempfile.mkstemp`` gives 0600)."""
    return _fresh(parent, prefix, lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``path`` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path.parent, f".{path.name}.tmp-")
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_save(ds, path: str | os.PathLike) -> None:
    """``Dataset.save_to_disk`` through :func:`atomic_dir`."""
    with atomic_dir(path) as tmp:
        ds.save_to_disk(str(tmp))


def atomic_file(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(_temp_file(path.parent, f".{path.name}."))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (indented, non-JSON values as ``str``)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")

    atomic_file(path, write)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def save_npy(path: str | os.PathLike, array) -> None:
    """``np.save`` through :func:`atomic_file` (a file object: np.save would append .npy to a name)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_file(path, write)


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """``np.savez`` through :func:`atomic_file`."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_file(path, write)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock that the OS releases when its holder dies: no stale lock after a kill.

    Concurrent processes on the same output (DDP ranks, two runs on one folder) wait here in turn.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
