"""Packed decoding for fixed-window models: many short clips share one input window.

Whisper encodes a full 30-s window whatever the clip's length, so a 1-s clip costs as much as
30 s of audio. Packing clips one after another, separated by silence, and decoding the window
with timestamps divides the encoder's cost by the number of clips per window; the timestamped
segments are then split back to the clips they fall in. These are the pure parts (layout and
assignment); ``WhisperASR.transcribe(pack=True)`` does the decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """Clip ``index`` of the input lies at [start, end) seconds of its window."""

    index: int
    start: float
    end: float


def plan_windows(durations: Sequence[float], window: float, gap: float) -> list[list[Placement]]:
    """Clips in input order, each window filled until the next clip would not fit; a clip longer
    than the window gets one to itself (the caller decides whether it can be decoded at all).

    ``gap`` seconds of silence follow every clip: long enough that the decoder closes a segment
    between two clips, so each segment's timestamps say which clip it came from.
    """
    windows: list[list[Placement]] = []
    current: list[Placement] = []
    t = 0.0
    for i, d in enumerate(durations):
        if current and t + d > window:
            windows.append(current)
            current, t = [], 0.0
        current.append(Placement(i, t, t + d))
        t += d + gap
    if current:
        windows.append(current)
    return windows


# A segment is split between clips only when a second clip holds at least this share of its
# time: Whisper's timestamps drift by up to a second over a window (it often runs through the
# silence between clips), and a drifted segment of one clip must stay whole.
MIN_SPLIT_SHARE = 0.3


def split_segments(segments: Sequence[tuple[str, float, float]], placements: Sequence[Placement]) -> list[str]:
    """The text of each placed clip, from one window's timestamped ``(text, start, end)`` segments.

    A segment goes to the clip it overlaps most. One that runs across a gap (the decoder did not
    close it between two clips) is split between the clips holding at least ``MIN_SPLIT_SHARE``
    of its time, its words in order and in proportion to the overlaps. A segment that overlaps
    no clip (zero length, or inside a gap) goes to the clip nearest its start.
    """
    texts: list[list[str]] = [[] for _ in placements]
    for text, start, end in segments:
        words = text.split()
        if not words:
            continue
        overlap = [max(0.0, min(end, p.end) - max(start, p.start)) for p in placements]
        total = sum(overlap)
        if total <= 0:
            nearest = min(range(len(placements)), key=lambda i: _distance(start, placements[i]))
            texts[nearest].extend(words)
            continue
        best = max(overlap)
        owners = [i for i, o in enumerate(overlap) if o == best or o >= MIN_SPLIT_SHARE * total]
        weights = [overlap[i] for i in owners]
        cut, acc = 0, 0.0
        for i, w in zip(owners, weights, strict=True):
            acc += w
            nxt = round(len(words) * acc / sum(weights))
            texts[i].extend(words[cut:nxt])
            cut = nxt
    return [" ".join(w) for w in texts]


def _distance(t: float, p: Placement) -> float:
    return 0.0 if p.start <= t <= p.end else min(abs(t - p.start), abs(t - p.end))


def timestamped_segments(
    token_ids: Sequence[int], timestamp_begin: int, special_ids: set[int], decode, precision: float = 0.02
) -> list[tuple[str, float, float]]:
    """``(text, start, end)`` segments of one decoded window; token ids from ``timestamp_begin`` on
    are times in steps of ``precision`` seconds.

    Text is closed by the next timestamp; text after the last one (the decoder stopped without
    closing its segment) ends where it starts, so it goes to the clip that was being spoken.
    transformers' ``output_offsets`` drops that trailing text, which would read as a deletion.
    """
    segments: list[tuple[str, float, float]] = []
    start, pending = 0.0, []
    for t in (int(t) for t in token_ids):
        if t >= timestamp_begin:
            time = (t - timestamp_begin) * precision
            if pending:
                segments.append((decode(pending), start, max(time, start)))
                pending = []
            start = time
        elif t not in special_ids:
            pending.append(t)
    if pending:
        segments.append((decode(pending), start, start))
    return segments
