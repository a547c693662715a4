"""Signal processing on ragged batches: packed frames, per-utterance statistics, and a pitch tracker.

Every frame of every utterance of a batch lives in one matrix (no padding), so an utterance's
features are identical alone or in any batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class Packed:
    """Per-frame values of a batch of utterances stacked into one matrix, frames of an utterance contiguous.

    Padding utterances to a common length wastes compute (LibriSpeech batches carried 2x padding) and
    makes edge frames depend on the batch; packing frames instead keeps every utterance's features
    identical alone or in any batch. ``seg[n]`` is the utterance of frame n; utterance b has
    ``counts[b]`` frames from ``starts[b]``.
    """

    def __init__(self, counts: Sequence[int]) -> None:
        self.counts = torch.as_tensor(counts, dtype=torch.long)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.seg = torch.repeat_interleave(torch.arange(len(self.counts)), self.counts)
        self.size = len(self.counts)

    def shift(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """``x`` moved by k frames within each utterance, repeating its edge frames (no bleeding across)."""
        idx = torch.arange(len(x)) + k
        first = self.starts[self.seg]
        idx = torch.minimum(torch.maximum(idx, first), first + self.counts[self.seg] - 1)
        return x[idx]

    def seg_max(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_full((self.size,), -math.inf).scatter_reduce(0, self.seg, x, "amax")

    def seg_count(self, mask: torch.Tensor) -> torch.Tensor:
        """Frames of each utterance where ``mask`` holds, as floats."""
        return torch.zeros(self.size).index_add_(0, self.seg, mask.float())

    def split(self, x: torch.Tensor, mask: torch.Tensor) -> list:
        """Per-utterance rows of ``x`` where ``mask`` holds, as numpy arrays."""
        parts = torch.split(x, self.counts.tolist())
        masks = torch.split(mask, self.counts.tolist())
        return [p[m].numpy() for p, m in zip(parts, masks, strict=True)]


def power_frames(
    batch: Sequence[torch.Tensor], n_fft: int, hop: int, window: torch.Tensor
) -> tuple[torch.Tensor, Packed]:
    """Power spectra ``[N, n_fft // 2 + 1]`` of all frames of a batch (no centering: frames lie inside the
    clip), and their packing. ``window`` may be shorter than ``n_fft`` (zero-padded FFT). A clip shorter
    than one frame gets one zero-padded frame.
    """
    spectra = []
    for x in batch:
        if len(x) < n_fft:
            x = torch.nn.functional.pad(x, (0, n_fft - len(x)))
        spec = torch.stft(
            x, n_fft, hop, win_length=len(window), window=window, center=False, return_complex=True
        )
        spectra.append(torch.view_as_real(spec).square().sum(-1).T)
    return torch.cat(spectra), Packed([len(p) for p in spectra])


def speech_mask(energy_db: torch.Tensor, packed: Packed, floor_db: float) -> torch.Tensor:
    """Frames whose energy lies within ``floor_db`` of their utterance's loudest frame."""
    return energy_db > packed.seg_max(energy_db)[packed.seg] - floor_db


def seg_mean_std(
    x: torch.Tensor, seg: torch.Tensor, size: int, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation of rows of ``x`` per segment, over rows with weight 1.

    Two passes in float64: feature values in dB reach the hundreds, where E[x^2] - E[x]^2 in float32
    loses the variance of small coefficients. A segment with no rows gets zeros.
    """
    x = x.double()
    w = weight.double()[:, None]
    n = torch.zeros(size, 1, dtype=torch.float64).index_add_(0, seg, w).clamp_min(1.0)
    mean = torch.zeros(size, x.shape[1], dtype=torch.float64).index_add_(0, seg, x * w) / n
    var = torch.zeros_like(mean).index_add_(0, seg, (x - mean[seg]) ** 2 * w) / n
    return mean.float(), var.sqrt().float()


def seg_quantiles(
    x: torch.Tensor, seg: torch.Tensor, size: int, mask: torch.Tensor, qs: Sequence[float]
) -> torch.Tensor:
    """Quantiles ``[size, len(qs)]`` (linear interpolation) of ``x[mask]`` per segment; zeros where empty."""
    x, seg = x[mask], seg[mask]
    by_value = torch.argsort(x)
    order = by_value[torch.argsort(seg[by_value], stable=True)]  # by segment, then by value
    x = x[order]
    counts = torch.bincount(seg, minlength=size)
    starts = torch.cumsum(counts, 0) - counts
    out = x.new_zeros(size, len(qs))
    has = counts > 0
    for j, q in enumerate(qs):
        pos = q * (counts[has] - 1).to(x.dtype)
        lo = pos.floor().long()
        hi = torch.minimum(lo + 1, counts[has] - 1)
        frac = pos - lo
        out[has, j] = x[starts[has] + lo] * (1 - frac) + x[starts[has] + hi] * frac
    return out


def deltas(x: torch.Tensor, packed: Packed, width: int = 2) -> torch.Tensor:
    """Regression deltas over +-``width`` frames (HTK formula, as torchaudio's ``compute_deltas``), per utterance."""
    num = sum(k * (packed.shift(x, k) - packed.shift(x, -k)) for k in range(1, width + 1))
    return num / (2 * sum(k * k for k in range(1, width + 1)))


class PitchTracker:
    """f0 per 20 ms frame by the autocorrelation method (Boersma 1993), and its statistics.

    Speech frames are those within ``energy_floor_db`` of the utterance's loudest, as for the cepstra.
    """

    # Pitch runs at 8 kHz: f0 and its first harmonics lie far below 4 kHz, and half the rate halves the FFTs.
    RATE = 8_000
    HOP = 160  # 20 ms at 8 kHz: pitch moves slowly, and statistics need no finer track
    PERIODIC = 0.45  # autocorrelation peak above which a frame is periodic (Praat's voicing threshold)
    OCTAVE_COST = 0.01  # per octave, favours the shorter of two near-equal lags against octave errors (Praat)

    def __init__(self, f0_min: float, f0_max: float, energy_floor_db: float) -> None:
        if not 0 < f0_min < f0_max <= self.RATE / 4:
            raise ValueError(
                f"mfcc_stats: need 0 < f0_min < f0_max <= {self.RATE // 4} Hz, got {f0_min}, {f0_max}"
            )
        self.f0_min, self.f0_max, self.energy_floor_db = f0_min, f0_max, energy_floor_db
        # Windows of 3 periods of f0_min (Boersma 1993), zero-padded FFT long enough that the
        # autocorrelation does not wrap around at the longest lag.
        self.min_lag = int(self.RATE / f0_max)
        self.max_lag = math.ceil(self.RATE / f0_min)
        self.window = torch.hann_window(2 * math.ceil(1.5 * self.RATE / f0_min))
        self.nfft = 1 << (len(self.window) + self.max_lag + 1).bit_length()
        # Rumble below 50 Hz (under any f0 we search) makes weak noise frames look periodic at short lags.
        self.band = (torch.fft.rfftfreq(self.nfft, 1 / self.RATE) >= 50.0).float()
        w_power = torch.fft.rfft(self.window, n=self.nfft).abs().square()
        w_ac = self._autocorr(w_power[None])[0]
        self.window_ac = w_ac / w_ac[0]

    def _autocorr(self, power: torch.Tensor) -> torch.Tensor:
        """Autocorrelation (lags 0 .. max_lag + 1) from power spectra (Wiener-Khinchin)."""
        return torch.fft.irfft(power, n=self.nfft)[:, : self.max_lag + 2]

    @staticmethod
    def _downsample(x: torch.Tensor) -> torch.Tensor:
        """Halve the rate with a [1, 2, 1] / 4 low-pass (-17 dB at 6 kHz, enough for an f0 search), no DC."""
        x = torch.nn.functional.pad(x - x.mean(), (1, 1))  # the mean: a DC offset looks periodic at every lag
        return 0.25 * x[:-2:2] + 0.5 * x[1:-1:2] + 0.25 * x[2::2]

    def track(self, batch: Sequence[torch.Tensor]) -> tuple[Packed, torch.Tensor, torch.Tensor, torch.Tensor]:
        """f0 in Hz, periodicity mask and speech mask per frame of 16 kHz audio.

        The frame's autocorrelation is divided by the window's, so a periodic signal peaks near 1 at its
        period instead of decaying with lag; the peak lag is refined by parabolic interpolation.
        """
        low = [self._downsample(x) for x in batch]
        power, packed = power_frames(low, self.nfft, self.HOP, self.window)
        ac = self._autocorr(power * self.band)
        speech = speech_mask(10 * torch.log10(ac[:, 0] + 1e-10), packed, self.energy_floor_db)
        norm = ac / ac[:, :1].clamp_min(1e-10) / self.window_ac
        # Candidates are local maxima in the lag range, compared by their interpolated heights: sampled
        # heights favour whichever multiple of the period falls nearest an integer lag (octave errors).
        left = norm[:, self.min_lag - 1 : self.max_lag]
        mid = norm[:, self.min_lag : self.max_lag + 1]
        right = norm[:, self.min_lag + 1 : self.max_lag + 2]
        curvature = left - 2 * mid + right
        offset = (0.5 * (left - right) / curvature.clamp_max(-1e-12)).clamp(-0.5, 0.5)
        height = mid - 0.25 * (left - right) * offset
        lag = torch.arange(self.min_lag, self.max_lag + 1) + offset
        in_range = (lag >= self.RATE / self.f0_max) & (lag <= self.RATE / self.f0_min)
        peak = (mid > left) & (mid >= right) & (curvature < 0) & in_range
        score = height - self.OCTAVE_COST * torch.log2(lag * self.f0_min / self.RATE)
        best = torch.where(peak, score, -math.inf).argmax(1, keepdim=True)
        f0 = self.RATE / lag.gather(1, best)[:, 0]
        periodic = speech & peak.gather(1, best)[:, 0] & (height.gather(1, best)[:, 0] > self.PERIODIC)
        return packed, f0, periodic, speech

    def stats(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Median and interquartile range of log f0 over periodic frames, and the periodic fraction.

        Median and IQR rather than mean and std: a frame-wise tracker without path smoothing makes
        octave errors on a minority of frames, which would dominate a standard deviation.
        """
        packed, f0, periodic, speech = self.track(batch)
        q25, median, q75 = seg_quantiles(
            torch.log(f0), packed.seg, packed.size, periodic, (0.25, 0.5, 0.75)
        ).T
        n_periodic, n_speech = packed.seg_count(periodic), packed.seg_count(speech)
        # No periodic frame (noise, whisper): the middle of the search range, flagged by a zero fraction.
        median = torch.where(n_periodic > 0, median, math.log(math.sqrt(self.f0_min * self.f0_max)))
        return torch.stack([median, q75 - q25, n_periodic / n_speech.clamp_min(1)], 1)
