"""Running an embedder over a canonical dataset (in-process or in a worker pool), cached on disk.

Results live under ``cache_dir/<embedder key>/<dataset fingerprint>.*`` with the dataset's ids
beside them (``.ids.json``, checked on load) and the embedder's description (``embedder.json``), so
a rerun (say with another ratio estimator) reads the file instead of recomputing. Embeddings are
one ``.npy`` matrix; frame features one ``.frames.npz`` (all frames stacked plus per-utterance
lengths). Files are written atomically, and each is made under its lock (core.locks): two filter
runs embedding the same data at once (ablation seeds started together) compute it once, the
second waiting for the first and then reading its file.

Under a launcher the processes split the work (:func:`embed_share`): process ``rank`` of ``world``
embeds its contiguous run of whole batches into a part, ``<fingerprint>.part-RRRRR-of-WWWWW.npz``
(the ids inside, checked on load), made under the part's lock; :func:`embed_dataset` with
``world`` then joins the parts, waiting for each one another process holds and computing any
nobody made, writes the usual file and deletes the parts. Every batch holds the rows it would in
one process, so the joined result is the single-process one, value for value. A killed run
resumes from the parts it finished.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from core import files, locks, pool, schema
from data_prep.filter.embed.base import Embedder

log = logging.getLogger(__name__)

CacheDir = str | os.PathLike | None


class _Embeddings:
    """One ``[n, dim]`` float32 matrix, stored as ``.npy``."""

    label, suffix, frames = "embeddings", ".npy", False

    @staticmethod
    def assemble(parts: list, embedder: Embedder) -> np.ndarray:
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, embedder.dim), np.float32)

    @staticmethod
    def join(values: list[np.ndarray], embedder: Embedder) -> np.ndarray:
        return _Embeddings.assemble(values, embedder)

    @staticmethod
    def arrays(emb: np.ndarray, embedder: Embedder) -> dict[str, np.ndarray]:
        return {"data": emb}

    @staticmethod
    def from_arrays(arrays) -> np.ndarray:
        return arrays["data"]

    @staticmethod
    def write(path: Path, emb: np.ndarray, embedder: Embedder) -> None:
        files.save_npy(path, emb)

    @staticmethod
    def read(path: Path, n: int, embedder: Embedder) -> tuple[np.ndarray | None, str]:
        emb = np.load(path)
        if emb.shape == (n, embedder.dim):
            return emb, ""
        return None, f"has shape {emb.shape}, expected {(n, embedder.dim)}"


class _Frames:
    """``[T_i, frame_dim]`` float32 per utterance, stored as one stacked matrix plus the lengths."""

    label, suffix, frames = "frame features", ".frames.npz", True

    @staticmethod
    def assemble(parts: list, embedder: Embedder) -> list[np.ndarray]:
        return [np.asarray(f, np.float32) for f in parts]

    @staticmethod
    def join(values: list[list[np.ndarray]], embedder: Embedder) -> list[np.ndarray]:
        return [f for value in values for f in value]

    @staticmethod
    def arrays(frames: list[np.ndarray], embedder: Embedder) -> dict[str, np.ndarray]:
        data = np.concatenate(frames) if frames else np.zeros((0, embedder.frame_dim), np.float32)
        return {"data": data, "lengths": np.array([len(f) for f in frames], dtype=np.int64)}

    @staticmethod
    def from_arrays(arrays) -> list[np.ndarray]:
        return np.split(arrays["data"], np.cumsum(arrays["lengths"])[:-1])

    @staticmethod
    def write(path: Path, frames: list[np.ndarray], embedder: Embedder) -> None:
        files.save_npz(path, **_Frames.arrays(frames, embedder))

    @staticmethod
    def read(path: Path, n: int, embedder: Embedder) -> tuple[list[np.ndarray] | None, str]:
        with np.load(path) as f:
            if len(f["lengths"]) == n:
                return _Frames.from_arrays(f), ""
            return None, f"holds {len(f['lengths'])} utterances, expected {n}"


def embed_dataset(
    ds,
    embedder: Embedder,
    cache_dir: CacheDir = None,
    *,
    batch_size: int = 32,
    num_proc: int = 1,
    world: int = 1,
) -> np.ndarray:
    """``[len(ds), embedder.dim]`` float32 embeddings of a canonical dataset, rows in ``ds`` order.

    With ``cache_dir``, stored as ``cache_dir/<embedder.key>/<ds fingerprint>.npy`` and reused by a
    later call with the same embedder options and dataset (after checking the ids). ``num_proc`` > 1
    runs CPU embedders in that many single-threaded processes. With ``world`` > 1 (and a
    ``cache_dir``) the result is joined from the parts that :func:`embed_share` made in ``world``
    processes, waiting for those still being made and computing those nobody made.
    """
    return _cached(_Embeddings, ds, embedder, cache_dir, batch_size, num_proc, world)


def frame_features_dataset(
    ds,
    embedder: Embedder,
    cache_dir: CacheDir = None,
    *,
    batch_size: int = 32,
    num_proc: int = 1,
    world: int = 1,
) -> list[np.ndarray]:
    """Frame-level features ``[T_i, embedder.frame_dim]`` per utterance of ``ds`` (for gmm_ubm), cached as
    ``<ds fingerprint>.frames.npz``; otherwise as :func:`embed_dataset`."""
    return _cached(_Frames, ds, embedder, cache_dir, batch_size, num_proc, world)


def embed_share(
    ds,
    embedder: Embedder,
    cache_dir: str | os.PathLike,
    rank: int,
    world: int,
    *,
    frames: bool = False,
    batch_size: int = 32,
    num_proc: int = 1,
) -> None:
    """Embeddings (``frames``: frame features) of process ``rank``'s share of ``ds`` into its cache
    part, unless the joined file or the part is there already, or another process is making the part
    (then the joining process waits for it)."""
    kind = _Frames if frames else _Embeddings
    cache = _CacheFiles(kind, ds, embedder, cache_dir)
    start, stop = share(len(cache.ids), batch_size, rank, world)
    part = cache.part(rank, world)
    if start == stop or cache.joined():
        return
    with locks.output_lock(part, f"{kind.label} share {rank} of {world}", wait=False) as held:
        if not held:
            log.info("%s is being made by %s: skipped here", part, locks.holder(part))
        elif cache.joined() or cache.part_done(rank, world, start, stop):  # joined or made meanwhile
            log.info("%s share %d of %d: already in the cache", kind.label, rank, world)
        else:
            cache.make_part(rank, world, start, stop, batch_size, num_proc)


def share(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of process ``rank`` of ``world``: a contiguous run of whole batches
    of ``batch_size``, so each batch holds the rows it holds in one process (the values of an
    embedder that pads a batch may depend on its neighbours). Empty when there are fewer batches
    than processes."""
    batches = math.ceil(n / batch_size)
    first, last = rank * batches // world, (rank + 1) * batches // world
    return min(first * batch_size, n), min(last * batch_size, n)


class _CacheFiles:
    """The cache files of one dataset, embedder and kind: the joined file, its ids, the parts."""

    def __init__(self, kind, ds, embedder: Embedder, cache_dir: str | os.PathLike):
        self.kind, self.ds, self.embedder = kind, ds, embedder
        self.ids = [str(i) for i in ds["id"]]
        self.folder = Path(cache_dir) / embedder.key
        self.stem = ds._fingerprint
        self.path = self.folder / f"{self.stem}{kind.suffix}"
        self.ids_file = self.folder / f"{self.stem}.ids.json"

    def part(self, rank: int, world: int) -> Path:
        frames = ".frames" if self.kind.frames else ""
        return self.folder / f"{self.stem}{frames}.part-{rank:05d}-of-{world:05d}.npz"

    def joined(self) -> bool:
        """Whether the joined file is there for these ids (its shape is checked when it is read)."""
        return self.path.exists() and _ids_match(self.ids_file, self.ids)

    def read(self):
        """The cached value, or None (logging why when the file is there but unusable)."""
        if not self.joined():
            return None
        value, problem = self.kind.read(self.path, len(self.ids), self.embedder)
        if value is None:
            log.warning("cache %s %s; recomputing", self.path, problem)
        else:
            log.info("%s of %d utterances from cache %s", self.kind.label, len(self.ids), self.path)
        return value

    def write(self, value) -> None:
        self.kind.write(self.path, value, self.embedder)
        files.write_json(self.embedder.describe(), self.folder / "embedder.json")
        files.write_json(self.ids, self.ids_file)

    def make_part(self, rank: int, world: int, start: int, stop: int, batch_size: int, num_proc: int):
        """Compute rows ``[start, stop)`` and write them as part ``rank`` (the caller holds its lock)."""
        n = len(self.ids)
        log.info("%s share %d of %d: rows [%d, %d) of %d", self.kind.label, rank, world, start, stop, n)
        value = _computed(self.kind, self.ds.select(range(start, stop)), self.embedder, batch_size, num_proc)
        arrays = self.kind.arrays(value, self.embedder)
        files.save_npz(self.part(rank, world), ids=np.array(self.ids[start:stop]), **arrays)
        return value

    def part_done(self, rank: int, world: int, start: int, stop: int) -> bool:
        """Whether part ``rank`` is there and holds exactly rows ``[start, stop)`` (a part made with
        another batch size holds other rows)."""
        path = self.part(rank, world)
        if not path.exists():
            return False
        with np.load(path) as f:
            if f["ids"].tolist() == self.ids[start:stop]:
                return True
        log.warning("cache part %s holds other rows than [%d, %d); recomputing", path, start, stop)
        return False

    def read_part(self, rank: int, world: int, start: int, stop: int):
        """Part ``rank``'s value, or None when :meth:`part_done` says it is not there."""
        if not self.part_done(rank, world, start, stop):
            return None
        with np.load(self.part(rank, world)) as f:
            return self.kind.from_arrays(f)

    def join(self, world: int, batch_size: int, num_proc: int):
        """Every process's part, in rank order, each made here if nobody made it."""
        values = []
        for rank in range(world):
            start, stop = share(len(self.ids), batch_size, rank, world)
            if start == stop:
                continue
            part = self.part(rank, world)
            with locks.output_lock(part, f"{self.kind.label} share {rank} of {world}"):
                value = self.read_part(rank, world, start, stop)
                if value is None:
                    value = self.make_part(rank, world, start, stop, batch_size, num_proc)
            values.append(value)
        log.info("%s of %d utterances joined from %d processes' parts", self.kind.label, len(self.ids), world)
        return self.kind.join(values, self.embedder)

    def remove_parts(self) -> None:
        """Every part of this file, of any number of processes: the joined file replaces them."""
        frames = ".frames" if self.kind.frames else ""
        for part in self.folder.glob(f"{self.stem}{frames}.part-*-of-*.npz"):
            part.unlink(missing_ok=True)


def _cached(kind, ds, embedder: Embedder, cache_dir: CacheDir, batch_size: int, num_proc: int, world: int):
    if cache_dir is None:
        return _computed(kind, ds, embedder, batch_size, num_proc)
    cache = _CacheFiles(kind, ds, embedder, cache_dir)
    with locks.output_lock(cache.path, f"{kind.label} ({embedder.key})"):
        value = cache.read()
        if value is None:
            value = (
                cache.join(world, batch_size, num_proc)
                if world > 1
                else _computed(kind, ds, embedder, batch_size, num_proc)
            )
            cache.write(value)
        cache.remove_parts()
    return value


def _computed(kind, ds, embedder: Embedder, batch_size: int, num_proc: int):
    t0 = time.perf_counter()
    embedder.counters.clear()
    value = kind.assemble(_compute(ds, embedder, batch_size, num_proc, kind.frames), embedder)
    _log_done(kind.label, ds, embedder, time.perf_counter() - t0)
    return value


def _ids_match(ids_file: Path, ids: list[str]) -> bool:
    if not ids_file.exists():
        return False
    if files.read_json(ids_file) != ids:
        log.warning("stale cache %s: its ids differ from the dataset's; recomputing", ids_file)
        return False
    return True


def _batches(ds, batch_size: int):
    """Decoded audio in batches of ``batch_size``; soundfile on the stored WAV bytes (no torchcodec)."""
    ds = schema.without_audio_decoding(ds.select_columns(["audio"]))
    for rows in ds.iter(batch_size=batch_size):
        yield [schema.decode_audio(a) for a in rows["audio"]]


def _apply(embedder: Embedder, ds, batch_size: int, frames: bool, bar: tqdm | None = None) -> list:
    """Embeddings (or frame matrices) of ``ds`` in order, one list entry per batch (or utterance)."""
    out: list = []
    for batch in _batches(ds, batch_size):
        out.extend(embedder.frames_batch(batch) if frames else [embedder.embed(batch)])
        if bar is not None:
            bar.update(len(batch))
    return out


@dataclass
class _Worker:
    """What each pool worker holds: its own copy of the embedder and the dataset."""

    embedder: Embedder
    ds: Any
    batch_size: int
    frames: bool


_worker: _Worker | None = None


def _worker_init(cls: type[Embedder], init_options: dict, ds, batch_size: int, frames: bool) -> None:
    global _worker
    _worker = _Worker(cls(**init_options), ds, batch_size, frames)


def _worker_run(span: tuple[int, int]) -> tuple[list, Counter]:
    w = _worker
    w.embedder.counters.clear()
    out = _apply(w.embedder, w.ds.select(range(*span)), w.batch_size, w.frames)
    return out, Counter(w.embedder.counters)


def _compute(ds, embedder: Embedder, batch_size: int, num_proc: int, frames: bool) -> list:
    desc = f"{'frames' if frames else 'embed'} {embedder.name}"
    if num_proc <= 1 or len(ds) <= batch_size:
        with tqdm(total=len(ds), desc=desc, unit="utt") as bar:
            return _apply(embedder, ds, batch_size, frames, bar)
    # CPU embedders scale with processes, each single-threaded. Tasks are a few batches each so
    # the progress bar moves and the workers stay balanced.
    step = batch_size * 4
    ranges = [(s, min(s + step, len(ds))) for s in range(0, len(ds), step)]
    init_options = dict(embedder.init_options)
    if "device" in init_options:
        init_options["device"] = "cpu"
    results: dict[int, list] = {}
    done = pool.imap_unordered(
        _worker_run,
        ranges,
        num_proc,
        initializer=_worker_init,
        initargs=(type(embedder), init_options, ds, batch_size, frames),
        sizes=[stop - start for start, stop in ranges],
        desc=desc,
        unit="utt",
    )
    for i, (items, counters) in done:
        results[ranges[i][0]] = items
        embedder.counters.update(counters)
    return [item for start, _ in ranges for item in results[start]]


def _log_done(what: str, ds, embedder: Embedder, seconds: float) -> None:
    audio_s = float(sum(ds["duration"])) if "duration" in ds.column_names else float("nan")
    log.info(
        "%s: %d utterances (%.0f s of audio) with %s in %.1f s (%.0fx real time)",
        what, len(ds), audio_s, embedder.key, seconds, audio_s / max(seconds, 1e-9),
    )  # fmt: skip
    for reason, count in sorted(embedder.counters.items()):
        log.info("%s: %d of %d utterances: %s", embedder.key, count, len(ds), reason)
