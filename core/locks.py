"""Locks on outputs, so two runs on one experiment folder wait for each other instead of clobbering.

A lock is an ``flock`` on a hidden sibling file, ``.<name>.lock`` beside the folder (or file) it
guards: outside the folder, because outputs are replaced whole (``files.atomic_dir``) and a lock
file inside would be deleted with them. The OS releases an flock when its holder dies, so a killed
run never leaves a stale lock, and a lock that can be taken means nobody is writing there. Lock
files are never deleted: a process could otherwise lock a fresh file while another still holds
the old one. The holder writes who it is (pid, host, what) into the file, so a waiting process
can say what it waits for. flock is reliable on local disks; on NFS it depends on the mount.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def lock_path(target: str | os.PathLike) -> Path:
    target = Path(target)
    return target.parent / f".{target.name}.lock"


UNKNOWN_HOLDER = "another process"


def holder(target: str | os.PathLike) -> str:
    """Who holds the lock on ``target``, as "<what> of pid N" (best effort: it may just have changed)."""
    try:
        rec = json.loads(lock_path(target).read_text())
        who = f"{rec['what']} of pid {rec['pid']}"
        return who if rec["host"] == socket.gethostname() else f"{who} on host {rec['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return UNKNOWN_HOLDER


def _known_holder(target: Path, patience: float = 0.5) -> str:
    """``holder`` once the holder has written its record: it does so right after taking the lock,
    so a waiter that arrives in between would otherwise name "another process"."""
    deadline = time.monotonic() + patience
    who = holder(target)
    while who == UNKNOWN_HOLDER and time.monotonic() < deadline:
        time.sleep(0.01)
        who = holder(target)
    return who


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, what: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock on ``target`` for the block; yields True once held.

    When a live process holds it: with ``wait`` log "waiting for <what> of pid N on <target>" and
    block until it is free; without, yield False at once (the caller skips ``target``).
    """
    target = Path(target)
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            t0 = time.monotonic()
            log.warning("waiting for %s on %s (%s)", _known_holder(target), target, path)
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.info("%s: lock free after %.0f s; %s goes on", target, time.monotonic() - t0, what)
        try:
            handle.truncate(0)  # "a+" writes at the end, which is now 0
            record = {"what": what, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            yield True
        finally:
            handle.truncate(0)  # a free lock names nobody
            fcntl.flock(handle, fcntl.LOCK_UN)


def stage_lock(stage: str, folder: Callable[..., str | os.PathLike]) -> Callable:
    """Decorate a stage function so it runs under the lock of its output folder ``folder(*args)``.

    A second run of the stage on the same folder waits (logging which process it waits for), then
    runs: a stage that finds its work done reuses it (evaluate, train's checkpoints, generate's
    shards), the others redo it identically. Runs on different folders never wait.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with output_lock(folder(*args, **kwargs), stage):
                return fn(*args, **kwargs)

        return locked

    return decorate
