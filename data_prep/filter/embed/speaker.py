"""`speaker`: speaker identity, as resemblyzer's GE2E d-vectors (CPU, offline) or a transformers x-vector model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
from scipy.ndimage import binary_dilation

from core.schema import SAMPLE_RATE
from data_prep.filter.embed.base import Embedder, check_batch, files_signature, padded_inputs, resolve_device


def _import_resemblyzer():
    # Imported on use: resemblyzer and webrtcvad are the optional extra `speaker`.
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
        resemblyzer, self._webrtcvad = _import_resemblyzer()
        hparams = resemblyzer.hparams
        self.hp = hparams
        self.rate, self.min_coverage = rate, min_coverage
        self.device = resolve_device(device)
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
        tensors = check_batch(batch)
        if not tensors:
            return np.zeros((0, self.dim), np.float32)
        partial, owner = self._partials([t.numpy() for t in tensors])
        raw = torch.zeros(len(tensors), self.dim).index_add_(0, owner, partial)
        # Pure silence gives all-zero partials; keep it a finite zero vector.
        return (raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()

    def frames_batch(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The d-vectors of the 1.6 s partial windows (about 1.3 per second)."""
        tensors = check_batch(batch)
        if not tensors:
            return []
        partial, owner = self._partials([t.numpy() for t in tensors])
        return [partial[owner == i].numpy() for i in range(len(tensors))]


class XVector(Embedder):
    """x-vectors from a transformers ``AutoModelForAudioXVector`` (e.g. a WavLM speaker-verification model).

    Hub ids need network access or a local HF cache (GPU boxes); any saved folder works offline.
    """

    name = "speaker"

    def __init__(self, model: str, device: str = "auto") -> None:
        super().__init__(model=model, device=device)
        # Imported on use: transformers' model classes take about 2 s to load, and only this
        # embedder and `encoder` need them.
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        self.device = resolve_device(device)
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(model)
        self.model = AutoModelForAudioXVector.from_pretrained(model).to(self.device).eval()
        self.dim = self.model.config.xvector_output_dim

    def signature(self) -> dict[str, Any]:
        return files_signature(self.options["model"])

    @torch.no_grad()
    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        tensors = check_batch(batch)
        out = np.zeros((len(tensors), self.dim), np.float32)
        for group, inputs in padded_inputs(self.feature_extractor, [t.numpy() for t in tensors]):
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            out[group] = self.model(**inputs).embeddings.float().cpu().numpy()
        return out
