"""Signal functions of the perturbations: pure functions of a mono float32 waveform and explicit
parameters (noise and room responses take an explicit generator), so a record replays exactly.

``gain``, ``speed``, ``tempo``, ``time_stretch`` (WSOLA), ``pitch_shift``, ``colored_noise``,
``add_noise``, ``synthetic_rir``, ``reverberate``, ``telephone``, ``codec`` (G.711 mu-law or
A-law at 8 kHz), ``bandlimit``, ``formant`` (vocal-tract-length perturbation).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
import torchaudio.functional as AF

from core.schema import SAMPLE_RATE

# A rational p/q with q <= 100 approximates any factor to 5e-5 relative, and keeps torchaudio's
# polyphase resampler small (its cost grows with q): speed runs at thousands x real time, while
# the exact ratio of an arbitrary float can have q in the thousands (minutes per clip).
MAX_RATIO_DENOMINATOR = 100
# Energy decays by 60 dB over RT60 seconds: amplitude exp(-ln(1000) t / RT60).
_LN_1000 = math.log(1000.0)


def check_mono(wav: torch.Tensor) -> None:
    if wav.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (time,), got shape {tuple(wav.shape)}")


def _ratio(factor: float) -> Fraction:
    if not factor > 0:
        raise ValueError(f"a rate factor must be positive, got {factor}")
    return Fraction(factor).limit_denominator(MAX_RATIO_DENOMINATOR)


def gain(wav: torch.Tensor, db: float) -> torch.Tensor:
    """Scale by ``db`` decibels (no clipping here: ``perturb`` limits the final peak)."""
    return wav * (10.0 ** (db / 20.0))


def speed(wav: torch.Tensor, factor: float) -> torch.Tensor:
    """Play ``factor`` times faster by resampling: duration / factor, pitch x factor."""
    check_mono(wav)
    r = _ratio(factor)
    return AF.resample(wav, r.numerator, r.denominator)


def time_stretch(wav: torch.Tensor, length: int, hop: int = 320, search: int = 128) -> torch.Tensor:
    """Change the duration to ``length`` samples without changing the pitch (WSOLA).

    Waveform-similarity overlap-add (Verhelst & Roelands 1993): output frames of 2*hop samples
    are cut from the input near their nominal position, each shifted by up to ``search`` samples
    to best continue the previous frame (normalised cross-correlation), then overlap-added with a
    Hann window. It keeps the waveform coherent (no phase-vocoder "phasiness") and costs one
    short correlation per 20 ms frame. The defaults (20 ms hop, +-8 ms search at 16 kHz) cover
    half a pitch period of voices down to about 60 Hz, which is what alignment needs.
    """
    check_mono(wav)
    y = wav.detach().cpu().numpy().astype(np.float32, copy=False)
    n_in, frame = len(y), 2 * hop
    if length <= 0:
        raise ValueError(f"time_stretch needs a positive target length, got {length}")
    alpha = n_in / length
    n_frames = -(-length // hop) + 1
    # Zero padding on both sides so every candidate window is inside the array.
    pad = frame + search
    tail = pad + frame + max(0, int(math.ceil(n_frames * hop * alpha)) - n_in)
    yp = np.concatenate([np.zeros(pad, np.float32), y, np.zeros(tail, np.float32)])
    energy = np.concatenate([[0.0], np.cumsum(yp.astype(np.float64) ** 2)])
    starts = np.empty(n_frames, np.int64)
    # Output frame j covers output samples [(j-1)*hop, (j+1)*hop): its nominal input start is
    # the input time of (j-1)*hop.
    nominal = pad + np.round(np.arange(n_frames) * hop * alpha).astype(np.int64) - hop
    starts[0] = nominal[0]
    for j in range(1, n_frames):
        target = yp[starts[j - 1] + hop : starts[j - 1] + hop + frame]
        lo = nominal[j] - search
        corr = np.correlate(yp[lo : lo + frame + 2 * search], target, "valid")
        seg_energy = energy[lo + frame : lo + frame + 2 * search + 1] - energy[lo : lo + 2 * search + 1]
        starts[j] = lo + int(np.argmax(corr / np.sqrt(seg_energy + 1e-9)))
    window = np.hanning(frame + 1)[:frame].astype(np.float32)  # periodic Hann: halves sum to 1
    frames = np.lib.stride_tricks.sliding_window_view(yp, frame)[starts] * window
    out = np.zeros((n_frames + 1) * hop, np.float32)
    out[: n_frames * hop] += frames[:, :hop].reshape(-1)
    out[hop:] += frames[:, hop:].reshape(-1)
    return torch.from_numpy(out[hop : hop + length].copy())


def tempo(wav: torch.Tensor, factor: float) -> torch.Tensor:
    """Speak ``factor`` times faster at the same pitch."""
    return time_stretch(wav, max(1, round(wav.shape[-1] / factor)))


def pitch_shift(wav: torch.Tensor, semitones: float) -> torch.Tensor:
    """Shift the pitch by ``semitones`` and keep the exact duration.

    Resampling by the pitch ratio moves pitch and duration together; WSOLA then restores the
    duration. torchaudio's ``pitch_shift`` does the same with a phase vocoder but resamples by
    ``int(sr / ratio)`` Hz, a ratio whose reduced denominator is in the thousands: slower than
    real time on a 10 s clip. A rational approximation with a small denominator is exact to
    0.002 semitones and runs hundreds of times faster than real time.
    """
    check_mono(wav)
    if abs(semitones) > 12:
        raise ValueError(f"pitch shifts beyond an octave are not speech augmentation: {semitones} semitones")
    r = _ratio(2.0 ** (semitones / 12.0))
    return time_stretch(AF.resample(wav, r.numerator, r.denominator), wav.shape[-1])


NOISE_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # exponent b of the power spectrum 1/f^b


def colored_noise(length: int, color: str, generator: torch.Generator) -> torch.Tensor:
    """Unit-variance Gaussian noise whose power spectrum falls as 1/f^b (white 0, pink 1, brown 2)."""
    if color not in NOISE_COLORS:
        raise ValueError(f"unknown noise color {color!r}; choose one of {sorted(NOISE_COLORS)}")
    white = torch.randn(length, generator=generator)
    b = NOISE_COLORS[color]
    if b == 0.0:
        return white
    spec = torch.fft.rfft(white)
    freqs = torch.arange(spec.shape[-1], dtype=torch.float32)
    freqs[0] = 1.0  # the DC bin is zeroed below; avoid dividing by zero
    spec = spec * freqs.pow(-b / 2.0)
    spec[0] = 0.0
    noise = torch.fft.irfft(spec, n=length)
    return noise / noise.pow(2).mean().sqrt().clamp_min(1e-12)  # unit power (the mean is zero)


def add_noise(wav: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Add ``noise`` scaled so that the whole-clip signal-to-noise ratio is ``snr_db``."""
    check_mono(wav)
    if noise.shape != wav.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from the waveform's {tuple(wav.shape)}")
    if float(noise.pow(2).sum()) == 0.0 or float(wav.pow(2).sum()) == 0.0:
        return wav.clone()  # an SNR is undefined against silence: nothing to scale
    return AF.add_noise(wav[None], noise[None], torch.tensor([float(snr_db)]))[0]


def synthetic_rir(
    rt60: float, drr_db: float, generator: torch.Generator, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """A room impulse response: a unit direct path plus an exponentially decaying noise tail.

    The tail (Polack's statistical model) decays by 60 dB over ``rt60`` s and is scaled so the
    direct-to-reverberant energy ratio is ``drr_db``: the two numbers that describe a room and
    a talker's distance. It starts 2.5 ms after the direct path, the order of the first wall
    reflection in a small room.
    """
    if not 0.05 <= rt60 <= 3.0:
        raise ValueError(f"rt60 must be in [0.05, 3] s (rooms, not cathedrals), got {rt60}")
    n = max(2, int(rt60 * sample_rate))
    t = torch.arange(n, dtype=torch.float32) / sample_rate
    tail = torch.randn(n, generator=generator) * torch.exp(-_LN_1000 * t / rt60)
    tail[: max(1, int(0.0025 * sample_rate))] = 0.0
    tail = tail * math.sqrt(10.0 ** (-drr_db / 10.0) / float(tail.pow(2).sum()))
    tail[0] = 1.0
    return tail


def _fft_size(n: int) -> int:
    # The FFT of a power of two is always fast; an arbitrary n can have large prime factors
    # (torchaudio's fftconvolve uses n as is and ran 3x slower here).
    return 1 << (n - 1).bit_length()


def reverberate(wav: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """Convolve with a room response, keeping the length and the energy of the input.

    The output is cut at the input's length (the decaying tail past the end is dropped) so
    transcripts and durations stay aligned; the energy is restored so a later SNR or gain
    means the same thing with and without reverberation.
    """
    check_mono(wav)
    n = wav.shape[-1]
    size = _fft_size(n + rir.shape[-1] - 1)
    out = torch.fft.irfft(torch.fft.rfft(wav, size) * torch.fft.rfft(rir, size), size)[:n]
    in_energy, out_energy = float(wav.pow(2).sum()), float(out.pow(2).sum())
    if out_energy > 0.0:
        out = out * math.sqrt(in_energy / out_energy)
    return out


# A 4th-order Butterworth filter is two biquads with these quality factors (poles at 22.5 and
# 67.5 degrees); torchaudio's biquads are 2nd order, too gentle for a telephone band edge.
_BUTTERWORTH4_Q = (0.5412, 1.3066)
_TELEPHONE_RATE = 8000
_G711_CHANNELS = 256  # G.711: 8 bits per sample
_A_LAW_A = 87.6  # G.711's (European) A-law constant
G711_LAWS = ("mu-law", "a-law")


def a_law_encoding(x: torch.Tensor, quantization_channels: int = _G711_CHANNELS) -> torch.Tensor:
    """A-law companding (A = 87.6) of ``x`` in [-1, 1] to integer codes 0..channels-1.

    The continuous law, uniformly quantized, with the code layout of torchaudio's
    ``mu_law_encoding``, so the two laws differ only in their curve: linear below 1/A,
    logarithmic above. (G.711 tables approximate the same curve by 8 linear segments.)
    """
    ax = _A_LAW_A * x.abs().clamp(max=1.0)
    y = torch.where(ax < 1.0, ax, 1.0 + torch.log(ax.clamp_min(1.0))) / (1.0 + math.log(_A_LAW_A))
    q = quantization_channels - 1
    return ((torch.sign(x) * y + 1.0) / 2.0 * q + 0.5).to(torch.int64)


def a_law_decoding(codes: torch.Tensor, quantization_channels: int = _G711_CHANNELS) -> torch.Tensor:
    """The inverse of ``a_law_encoding``: codes 0..channels-1 back to amplitudes in [-1, 1]."""
    y = codes.to(torch.float32) / (quantization_channels - 1) * 2.0 - 1.0
    v = y.abs() * (1.0 + math.log(_A_LAW_A))
    return torch.sign(y) * torch.where(v < 1.0, v, torch.exp(v - 1.0)) / _A_LAW_A


def codec(wav: torch.Tensor, law: str = "mu-law", sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A G.711 codec without the telephone band-pass: 8 kHz, 8-bit ``mu-law`` or ``a-law``, and back.

    The resampler's anti-aliasing leaves under 1% of white noise's energy above 4 kHz. The
    signal is clipped to [-1, 1] before companding, as a real encoder saturates. Both laws
    give about 38 dB SNR over a wide range of levels; mu-law resolves quiet signals better
    (its smallest step is a third of A-law's).
    """
    check_mono(wav)
    if law not in G711_LAWS:
        raise ValueError(f"unknown codec law {law!r}; choose one of {list(G711_LAWS)}")
    x = AF.resample(wav, sample_rate, _TELEPHONE_RATE).clamp(-1.0, 1.0)
    if law == "mu-law":
        x = AF.mu_law_decoding(AF.mu_law_encoding(x, _G711_CHANNELS), _G711_CHANNELS)
    else:
        x = a_law_decoding(a_law_encoding(x))
    return AF.resample(x, _TELEPHONE_RATE, sample_rate)[: wav.shape[-1]]


def telephone(
    wav: torch.Tensor, low_hz: float = 300.0, high_hz: float = 3400.0, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """A narrow-band telephone channel: band-pass, then ``codec`` (8 kHz, 8-bit mu-law, and back).

    The input is clipped to [-1, 1] first, as a real codec would saturate.
    """
    check_mono(wav)
    if not 0 < low_hz < high_hz < _TELEPHONE_RATE / 2:
        raise ValueError(f"telephone band must satisfy 0 < low_hz < high_hz < 4000, got {low_hz}-{high_hz}")
    x = wav.clamp(-1.0, 1.0)
    for q in _BUTTERWORTH4_Q:
        x = AF.highpass_biquad(x, sample_rate, low_hz, q)
        x = AF.lowpass_biquad(x, sample_rate, high_hz, q)
    return codec(x, "mu-law", sample_rate)


# Resamplers' anti-aliasing filters pass up to 90-99% of the new Nyquist frequency (torchaudio
# 99%, sox's default 95%): the band limit falls off over the top 5% below the cutoff.
_BANDLIMIT_TRANSITION = 0.05


def bandlimit(wav: torch.Tensor, cutoff_hz: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Keep only frequencies below ``cutoff_hz``, as a recording at 2 x cutoff_hz resampled to 16 kHz.

    A zero-phase low-pass applied with one FFT of the clip: unity gain up to 95% of the cutoff,
    a raised-cosine fall to zero at the cutoff. Resampling through a rate of 2 x cutoff would do
    the same, but an arbitrary cutoff makes that rate's ratio to 16 kHz have a denominator in the
    thousands, and torchaudio's polyphase resampler then costs thousands of operations a sample.
    """
    check_mono(wav)
    if not 0 < cutoff_hz < sample_rate / 2:
        raise ValueError(f"cutoff_hz must be in (0, {sample_rate / 2:g}) Hz, got {cutoff_hz}")
    n = wav.shape[-1]
    edge = cutoff_hz * (1.0 - _BANDLIMIT_TRANSITION)
    # The filter's impulse response rings for about 1 / (transition width) s on both sides; ten
    # times that in zero padding keeps the ringing of the clip's end from wrapping onto its start.
    pad = int(10 * sample_rate / (cutoff_hz - edge))
    size = _fft_size(n + pad)
    freqs = torch.fft.rfftfreq(size, 1.0 / sample_rate)
    t = ((freqs - edge) / (cutoff_hz - edge)).clamp(0.0, 1.0)
    response = 0.5 * (1.0 + torch.cos(math.pi * t))
    return torch.fft.irfft(torch.fft.rfft(wav, size) * response, size)[:n]


# 32 ms frames resolve the harmonics of voices above ~60 Hz, and a 4x overlap of Hann windows
# lets a frame-wise gain change smoothly.
_FORMANT_FFT = 512
_FORMANT_HOP = 128
# The spectral envelope is the cepstrum below 2 ms: shorter than the pitch period of voices up
# to 500 Hz, so harmonics stay out of it, yet it resolves formants about 500 Hz apart.
_FORMANT_LIFTER_S = 0.002
# Jaitly & Hinton (2013) warp linearly up to F_hi = 4800 Hz at 16 kHz (0.6 x Nyquist), then
# map the rest of the band linearly onto what is left, so Nyquist stays at Nyquist.
_VTLP_F_HI = 0.6
# Bins more than 80 dB below the clip's loudest carry no envelope worth warping; the floor
# keeps the log finite in digital silence.
_FORMANT_FLOOR = 1e-8


def vtlp_source_hz(freqs: torch.Tensor, alpha: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """For each output frequency, the input frequency the VTLP warp by ``alpha`` maps onto it.

    The forward warp (Jaitly & Hinton 2013) is f -> alpha f up to the boundary
    b = F_hi min(alpha, 1) / alpha, then linear from (b, alpha b) to (Nyquist, Nyquist).
    """
    nyquist = sample_rate / 2
    b = _VTLP_F_HI * nyquist * min(alpha, 1.0) / alpha
    return torch.where(
        freqs <= alpha * b, freqs / alpha, b + (freqs - alpha * b) * (nyquist - b) / (nyquist - alpha * b)
    )


def formant(wav: torch.Tensor, alpha: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Vocal-tract-length perturbation: formants move by ``alpha``; F0 and the duration stay.

    Per 32 ms frame, the spectral envelope (the low-quefrency cepstrum of the log power, i.e.
    the vocal tract's filter) is warped along frequency by the VTLP map (``vtlp_source_hz``:
    formants below ~0.6 x Nyquist scale by exactly ``alpha``), and the frame is multiplied by
    the ratio of the warped to the original envelope. The harmonics (the source) and the phase
    are kept, so the fundamental and every harmonic stay at their frequency, while their
    amplitudes follow the moved formants; the length is exact and the energy of the input is
    restored. alpha > 1 sounds like a shorter vocal tract (a smaller speaker).

    Why not resampling: resampling by alpha scales F0 and formants together, and neither WSOLA
    (``time_stretch``, which keeps the local waveform, pitch and formants alike) nor
    ``pitch_shift`` (resampling again) separates them: speed by alpha and pitch shift back by
    1/alpha is the identity, not a formant shift. Separating the source from the filter, as the
    cepstrum does, is what moves formants relative to F0.
    """
    check_mono(wav)
    if not 0.5 <= alpha <= 2.0:
        raise ValueError(f"formant warps beyond a factor of 2 are not speech augmentation: alpha={alpha}")
    n = wav.shape[-1]
    window = torch.hann_window(_FORMANT_FFT)
    # Zero padding at the ends, not torch's default reflection, which refuses clips under 16 ms.
    spec = torch.stft(
        wav, _FORMANT_FFT, _FORMANT_HOP, window=window, pad_mode="constant", return_complex=True
    ).T
    power = spec.real.square() + spec.imag.square()
    log_power = torch.log(power.clamp_min(float(power.max()) * _FORMANT_FLOOR + 1e-20))
    cepstrum = torch.fft.irfft(log_power, _FORMANT_FFT)
    lifter = int(_FORMANT_LIFTER_S * sample_rate)
    cepstrum[:, lifter + 1 : _FORMANT_FFT - lifter] = 0.0
    envelope = torch.fft.rfft(cepstrum).real
    bins = envelope.shape[-1]
    freqs = torch.arange(bins, dtype=torch.float32) * (sample_rate / _FORMANT_FFT)
    source = (vtlp_source_hz(freqs, alpha, sample_rate) * (_FORMANT_FFT / sample_rate)).clamp(0, bins - 1)
    lo = source.floor().long().clamp(max=bins - 2)
    frac = source - lo
    warped = envelope[:, lo] * (1.0 - frac) + envelope[:, lo + 1] * frac
    spec = spec * torch.exp(0.5 * (warped - envelope))  # log power -> amplitude
    out = torch.istft(spec.T, _FORMANT_FFT, _FORMANT_HOP, window=window, length=n)
    in_energy, out_energy = float(wav.pow(2).sum()), float(out.pow(2).sum())
    if out_energy > 0.0:
        out = out * math.sqrt(in_energy / out_energy)
    return out
