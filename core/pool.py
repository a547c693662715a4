"""Run independent tasks in spawned single-threaded worker processes, with one progress bar.

The generate stage runs its shards through it and the filter's embedders their batches of
utterances. Workers are spawned, not forked: forking a process whose torch thread pools already
started can deadlock. Each worker uses one thread, because parallelism comes from the processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any

import torch
from tqdm.auto import tqdm


def _init_worker(initializer: Callable[..., None] | None, initargs: tuple, log_level: int) -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=log_level)
    if initializer is not None:
        initializer(*initargs)


def imap_unordered(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    num_proc: int,
    *,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    sizes: Sequence[int] | None = None,
    desc: str = "",
    unit: str = "task",
    log_level: int = logging.WARNING,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, fn(tasks[index]))`` as the workers finish them (any order).

    ``fn`` and ``initializer`` must be importable module-level functions (spawn pickles them);
    ``initializer(*initargs)`` runs once in every worker. ``sizes`` weights the progress bar
    (e.g. utterances per task); by default each task counts one.
    """
    sizes = list(sizes) if sizes is not None else [1] * len(tasks)
    with (
        ProcessPoolExecutor(
            num_proc,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(initializer, initargs, log_level),
        ) as pool,
        tqdm(total=sum(sizes), desc=f"{desc} x{num_proc}", unit=unit) as bar,
    ):
        futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            i = futures[future]
            yield i, future.result()
            bar.update(sizes[i])
