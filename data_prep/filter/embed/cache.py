"""Running an embedder over a canonical dataset (in-process or in a worker pool), cached on disk.

Results live under ``cache_dir/<embedder key>/<dataset fingerprint>.*`` with the dataset's ids
beside them (``.ids.json``, checked on load) and the embedder's description (``embedder.json``), so
a rerun (say with another ratio estimator) reads the file instead of recomputing. Embeddings are
one ``.npy`` matrix; frame features one ``.frames.npz`` (all frames stacked plus per-utterance
lengths). Files are written atomically, and each is made under its lock (core.locks): two filter
runs embedding the same data at once (ablation seeds started together) compute it once, the
second waiting for the first and then reading its file.
"""

from __future__ import annotations

import logging
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
    def write(path: Path, frames: list[np.ndarray], embedder: Embedder) -> None:
        data = np.concatenate(frames) if frames else np.zeros((0, embedder.frame_dim), np.float32)
        files.save_npz(path, data=data, lengths=np.array([len(f) for f in frames], dtype=np.int64))

    @staticmethod
    def read(path: Path, n: int, embedder: Embedder) -> tuple[list[np.ndarray] | None, str]:
        with np.load(path) as f:
            data, lengths = f["data"], f["lengths"]
        if len(lengths) == n:
            return np.split(data, np.cumsum(lengths)[:-1]), ""
        return None, f"holds {len(lengths)} utterances, expected {n}"


def embed_dataset(
    ds, embedder: Embedder, cache_dir: CacheDir = None, *, batch_size: int = 32, num_proc: int = 1
) -> np.ndarray:
    """``[len(ds), embedder.dim]`` float32 embeddings of a canonical dataset, rows in ``ds`` order.

    With ``cache_dir``, stored as ``cache_dir/<embedder.key>/<ds fingerprint>.npy`` and reused by a
    later call with the same embedder options and dataset (after checking the ids). ``num_proc`` > 1
    runs CPU embedders in that many single-threaded processes.
    """
    return _cached(_Embeddings, ds, embedder, cache_dir, batch_size, num_proc)


def frame_features_dataset(
    ds, embedder: Embedder, cache_dir: CacheDir = None, *, batch_size: int = 32, num_proc: int = 1
) -> list[np.ndarray]:
    """Frame-level features ``[T_i, embedder.frame_dim]`` per utterance of ``ds`` (for gmm_ubm), cached as
    ``<ds fingerprint>.frames.npz``; otherwise as :func:`embed_dataset`."""
    return _cached(_Frames, ds, embedder, cache_dir, batch_size, num_proc)


def _cached(kind, ds, embedder: Embedder, cache_dir: CacheDir, batch_size: int, num_proc: int):
    if cache_dir is None:
        return _computed(kind, ds, embedder, batch_size, num_proc)
    ids = [str(i) for i in ds["id"]]
    folder = Path(cache_dir) / embedder.key
    stem = folder / ds._fingerprint
    path = stem.with_name(stem.name + kind.suffix)
    ids_file = stem.with_name(stem.name + ".ids.json")
    with locks.output_lock(path, f"{kind.label} ({embedder.key})"):
        if path.exists() and _ids_match(ids_file, ids):
            value, problem = kind.read(path, len(ids), embedder)
            if value is not None:
                log.info("%s of %d utterances from cache %s", kind.label, len(ids), path)
                return value
            log.warning("cache %s %s; recomputing", path, problem)
        value = _computed(kind, ds, embedder, batch_size, num_proc)
        kind.write(path, value, embedder)
        files.write_json(embedder.describe(), folder / "embedder.json")
        files.write_json(ids, ids_file)
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
