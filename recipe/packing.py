"""Training examples as windows of utterances: window packing for Whisper, and the sampling plan.

Whisper's encoder always sees a 30-s window, so a 3-s utterance spends ~90% of the encoder's
compute on padding. Packing several utterances, separated by short silences, into one window
with the concatenated transcript (as distil-whisper's ``concatenate_audio`` does) removes most of
that waste; Whisper was pretrained on 30-s windows holding several sentences, so packed windows
stay in its distribution. An unpacked example is simply a window of one utterance, so the
trainer, the collators and the samplers see one kind of example either way.

Packed windows are drawn afresh every epoch (``EpochPacker``, seeded by the run and the epoch):
windows packed once would put the same utterances side by side for the whole run, so every run
would train on one fixed arrangement of its data on top of its choice of data.

Audio is decoded here, per example, from the WAV bytes of the canonical dataset: nothing
derived from the audio is stored (the HF example caches 80x3000 floats, ~960 KB, per utterance).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from core import schema
from core.config import ConfigError
from core.seeding import stream_rng

logger = logging.getLogger(__name__)


def pack_windows(
    order: Sequence[int],
    durations: Sequence[float],
    label_tokens: Sequence[int],
    max_seconds: float,
    gap_seconds: float,
    max_tokens: int,
) -> list[list[int]]:
    """Greedy next-fit packing of utterances, taken in ``order``, into windows.

    A window is closed when the next utterance would push its audio (utterances plus one gap
    between neighbours) past ``max_seconds`` or its label past ``max_tokens``. Next-fit in a
    seeded random order (rather than first-fit-decreasing) keeps the windows' contents random,
    so the model does not see the same length-sorted neighbours together. An utterance that
    alone exceeds a limit gets a window of its own (the length guards ran before this).
    """
    windows: list[list[int]] = []
    current: list[int] = []
    seconds = 0.0
    tokens = 0
    for i in order:
        d, t = float(durations[i]), int(label_tokens[i])
        if current and (seconds + gap_seconds + d > max_seconds or tokens + t > max_tokens):
            windows.append(current)
            current, seconds, tokens = [], 0.0, 0
        seconds += d if not current else gap_seconds + d
        tokens += t
        current.append(int(i))
    if current:
        windows.append(current)
    return windows


def window_seconds(window: Sequence[int], durations: Sequence[float], gap_seconds: float) -> float:
    """Audio length of a window: its utterances plus the gaps between them."""
    return float(sum(durations[i] for i in window)) + gap_seconds * max(len(window) - 1, 0)


def split_oversized(windows: list[list[int]], too_long: Sequence[bool]) -> tuple[list[list[int]], int]:
    """Replace each window flagged ``too_long`` by one window per utterance.

    Token counts of a joined transcript are not always the sum of the parts' counts (BPE at the
    join), so packed labels are re-measured exactly and the rare window over the limit is undone
    instead of being cut by the model mid-run. Returns the windows and how many were split.
    """
    out: list[list[int]] = []
    n_split = 0
    for w, bad in zip(windows, too_long, strict=True):
        if bad and len(w) > 1:
            out.extend([i] for i in w)
            n_split += 1
        else:
            out.append(w)
    return out, n_split


def draw_order(weights: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """The utterances one pass over the training data visits: a permutation of ``range(n)``, or,
    with ``weights``, ``round(sum(weights))`` draws with replacement in proportion to them
    (the mass of a row is its expected number of visits per pass)."""
    if weights is None:
        return rng.permutation(n)
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != n or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError("sampling weights must be finite, non-negative, one per row, and not all zero")
    size = max(int(round(w.sum())), 1)
    return rng.choice(n, size=size, replace=True, p=w / w.sum())


def join_transcripts(texts: Sequence[str]) -> str:
    """The transcript of a packed window: the utterances' transcripts in order, one space apart."""
    return " ".join(t.strip() for t in texts if t.strip())


def concat_audio(arrays: Sequence[np.ndarray], gap_samples: int) -> np.ndarray:
    """Utterances joined with ``gap_samples`` of silence between neighbours."""
    if len(arrays) == 1:
        return np.asarray(arrays[0], dtype=np.float32)
    gap = np.zeros(gap_samples, dtype=np.float32)
    parts: list[np.ndarray] = []
    for k, a in enumerate(arrays):
        if k:
            parts.append(gap)
        parts.append(np.asarray(a, dtype=np.float32))
    return np.concatenate(parts)


class WindowDataset(torch.utils.data.Dataset):
    """Examples made of windows of rows of a canonical dataset (audio left as WAV bytes).

    An example is asked for by its index in ``windows`` or, from ``EpochWindowSampler``, by the
    window itself (a tuple of row indices): that sampler packs each epoch's windows afresh.
    ``weights`` (one per window, optional) are read by the trainer's weighted sampler;
    ``lengths`` (seconds per window) by its length-grouped sampler.
    """

    def __init__(
        self,
        rows,
        windows: list[list[int]],
        gap_seconds: float = 0.0,
        weights: np.ndarray | None = None,
    ):
        self.rows = schema.without_audio_decoding(rows.select_columns(["audio", "text", "duration"]))
        self.windows = windows
        self.gap_samples = int(round(gap_seconds * schema.SAMPLE_RATE))
        durations = np.asarray(self.rows["duration"], dtype=np.float64)
        self.lengths = [window_seconds(w, durations, gap_seconds) for w in windows]
        if weights is not None and len(weights) != len(windows):
            raise ValueError(f"{len(weights)} weights for {len(windows)} windows")
        self.weights = weights

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: int | tuple[int, ...]) -> dict:
        w = list(key) if isinstance(key, tuple) else self.windows[key]
        batch = self.rows[w]  # one Arrow read for the whole window
        audio = concat_audio([schema.decode_audio(a) for a in batch["audio"]], self.gap_samples)
        return {"audio": audio, "text": join_transcripts(batch["text"]), "n_utterances": len(w)}


class EpochPacker:
    """The packed windows of every epoch: ``windows(epoch)`` is a fresh seeded draw of the rows
    (``draw_order``, so weights are realized anew too) packed by next-fit, always ``n_windows``
    of them, shuffled.

    The count is fixed at epoch 0's because the Trainer derives its steps per epoch (and so how
    many epochs ``max_steps`` spans) from the dataset's length once: another epoch is packed from
    as many fresh draws as it takes to fill ``n_windows`` and cut there, so ``max_steps`` and
    ``num_train_epochs`` keep their meaning. Each pass over the draws keeps its first
    ``unpacked_share`` alone in a window (the shape evaluation decodes).
    """

    def __init__(self, asr, pool, weights: np.ndarray | None, targs, seed: int):
        self.asr, self.weights, self.targs, self.seed = asr, weights, targs, seed
        self.n = len(pool)
        self.durations = np.asarray(pool["duration"], dtype=np.float64)
        self.texts = pool["text"]
        self.limit = asr.label_limit(targs)
        # Each utterance's text tokens; the prefix/end tokens are paid once per window.
        self.overhead = asr.label_overhead()
        self.tokens = asr.label_lengths(self.texts) - self.overhead
        self.n_windows = len(self._one_pass(stream_rng(seed, 0), log_splits=True))
        self._cached: tuple[int, list[list[int]]] | None = None

    def _one_pass(self, rng: np.random.Generator, log_splits: bool = False) -> list[list[int]]:
        order = draw_order(self.weights, self.n, rng)
        n_single = int(round(self.targs.unpacked_share * len(order)))
        self.unpacked_per_pass = n_single  # every pass draws as many rows (n, or the weights' sum)
        windows = pack_windows(
            order[n_single:],
            self.durations,
            self.tokens,
            self.targs.pack_max_seconds,
            self.targs.pack_gap_seconds,
            self.limit - self.overhead,
        )
        joined = [join_transcripts([self.texts[i] for i in w]) for w in windows]
        windows, n_split = split_oversized(windows, self.asr.label_lengths(joined) > self.limit)
        if n_split and log_splits:
            logger.info(
                "packing: split %d windows whose joined label exceeded %d tokens", n_split, self.limit
            )
        return [[int(i)] for i in order[:n_single]] + windows

    def windows(self, epoch: int) -> list[list[int]]:
        if self._cached is None or self._cached[0] != epoch:
            rng = stream_rng(self.seed, epoch)
            out: list[list[int]] = []
            while len(out) < self.n_windows:
                out += self._one_pass(rng)
            out = out[: self.n_windows]
            self._cached = (epoch, [out[k] for k in rng.permutation(len(out))])
        return self._cached[1]


class EpochWindowSampler(torch.utils.data.Sampler):
    """Hands the trainer the windows themselves, packed afresh for the epoch the Trainer sets
    (accelerate's data loader forwards ``set_epoch`` to its sampler, resumed runs included). The
    same in every process: accelerate shards one shared sequence of batches across them."""

    def __init__(self, packer: EpochPacker):
        self.packer = packer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.packer.n_windows

    def __iter__(self):
        return iter([tuple(w) for w in self.packer.windows(self.epoch)])


def packing_summary(
    windows: list[list[int]], durations: Sequence[float], gap_seconds: float, window_s: float
) -> dict:
    """Counts for the log and the training report: how full the encoder's windows are."""
    speech = float(sum(durations[i] for w in windows for i in w))
    n = len(windows)
    return {
        "windows": n,
        "utterances": int(sum(len(w) for w in windows)),
        "utterances_per_window": round(sum(len(w) for w in windows) / max(n, 1), 2),
        "speech_fill": round(speech / max(n * window_s, 1e-9), 3),
        "max_window_seconds": round(
            max((window_seconds(w, durations, gap_seconds) for w in windows), default=0.0), 2
        ),
    }


def use_packing(asr, targs, durations: np.ndarray) -> bool:
    """Whether training packs windows: ``targs.packing``, or with ``auto`` whether it pays off."""
    if targs.packing == "off":
        return False
    if not asr.packable:
        if targs.packing == "on":
            raise ConfigError(
                f"packing: on needs a fixed input window (Whisper); a {asr.kind} model pads batches to the longest utterance: set packing: off"
            )
        return False
    if targs.packing == "on":
        return True
    # auto: worth it when at least two utterances fit a window on average
    return bool(len(durations)) and float(np.median(durations)) < asr.max_input_seconds / 2


def build_train_examples(
    asr, pool, weights: np.ndarray | None, targs, seed: int
) -> tuple[WindowDataset, dict, EpochPacker | None]:
    """Windows of pool rows: packed, with the packer that redraws them every epoch (weights
    realized by each epoch's draw of the rows), or one utterance each and no packer (weights
    left to the trainer's weighted sampler, fresh draws every epoch)."""
    durations = np.asarray(pool["duration"], dtype=np.float64)
    if not use_packing(asr, targs, durations):
        examples = WindowDataset(pool, [[i] for i in range(len(pool))], weights=weights)
        return examples, {"packing": False, "utterances": len(pool)}, None
    if not 0.0 <= targs.unpacked_share <= 1.0:
        raise ConfigError(f"unpacked_share must be within [0, 1], got {targs.unpacked_share}")
    packer = EpochPacker(asr, pool, weights, targs, seed)
    windows = packer.windows(0)
    summary = packing_summary(windows, durations, targs.pack_gap_seconds, asr.max_input_seconds)
    logger.info(
        "packing: %d utterance draws into %d windows per epoch, packed afresh every epoch (%d alone; %.2f per "
        "window, %.0f%% of the encoder's window is speech)",
        summary["utterances"],
        summary["windows"],
        packer.unpacked_per_pass,
        summary["utterances_per_window"],
        100 * summary["speech_fill"],
    )
    summary.update(unpacked_utterances=packer.unpacked_per_pass, repacked_every_epoch=True)
    return (
        WindowDataset(pool, windows, gap_seconds=targs.pack_gap_seconds),
        {"packing": True, **summary},
        packer,
    )
