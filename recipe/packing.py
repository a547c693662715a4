"""Training examples as windows of utterances: window packing for Whisper, and the sampling plan.

Whisper's encoder always sees a 30-s window, so a 3-s utterance spends ~90% of the encoder's
compute on padding. Packing several utterances, separated by short silences, into one window
with the concatenated transcript (as distil-whisper's ``concatenate_audio`` does) removes most of
that waste; Whisper was pretrained on 30-s windows holding several sentences, so packed windows
stay in its distribution. An unpacked example is simply a window of one utterance, so the
trainer, the collators and the samplers see one kind of example either way.

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

    def __getitem__(self, k: int) -> dict:
        w = self.windows[k]
        batch = self.rows[w]  # one Arrow read for the whole window
        audio = concat_audio([schema.decode_audio(a) for a in batch["audio"]], self.gap_samples)
        return {"audio": audio, "text": join_transcripts(batch["text"]), "n_utterances": len(w)}


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
) -> tuple[WindowDataset, dict]:
    """Windows of pool rows: packed (weights realized by a seeded draw of the rows first) or one
    utterance each (weights left to the trainer's weighted sampler, fresh draws every epoch)."""
    durations = np.asarray(pool["duration"], dtype=np.float64)
    if not use_packing(asr, targs, durations):
        return WindowDataset(pool, [[i] for i in range(len(pool))], weights=weights), {
            "packing": False,
            "utterances": len(pool),
        }
    if not 0.0 <= targs.unpacked_share <= 1.0:
        raise ConfigError(f"unpacked_share must be within [0, 1], got {targs.unpacked_share}")
    texts = pool["text"]
    limit = asr.label_limit(targs)
    rng = np.random.default_rng(seed)
    order = draw_order(weights, len(pool), rng)
    # Each utterance's text tokens; the prefix/end tokens are paid once per window.
    overhead = asr.label_overhead()
    tokens = asr.label_lengths(texts) - overhead
    # The first draws of the seeded order stay alone: windows shaped like evaluation's.
    n_single = int(round(targs.unpacked_share * len(order)))
    windows = pack_windows(
        order[n_single:], durations, tokens, targs.pack_max_seconds, targs.pack_gap_seconds, limit - overhead
    )
    joined = [join_transcripts([texts[i] for i in w]) for w in windows]
    windows, n_split = split_oversized(windows, asr.label_lengths(joined) > limit)
    if n_split:
        logger.info("packing: split %d windows whose joined label exceeded %d tokens", n_split, limit)
    windows = [[int(i)] for i in order[:n_single]] + windows
    summary = packing_summary(windows, durations, targs.pack_gap_seconds, asr.max_input_seconds)
    logger.info(
        "packing: %d utterance draws into %d windows (%d left alone; %.2f per window, %.0f%% of the encoder's window is speech)",
        summary["utterances"],
        summary["windows"],
        n_single,
        summary["utterances_per_window"],
        100 * summary["speech_fill"],
    )
    summary["unpacked_utterances"] = n_single
    return WindowDataset(pool, windows, gap_seconds=targs.pack_gap_seconds), {"packing": True, **summary}
