"""Map CTranslate2 Whisper variables onto transformers parameter names, checking nothing is left over.

Every transformers parameter must come from a CTranslate2 variable and every CTranslate2 weight must
land somewhere: a randomly initialized tensor left behind would silently ruin every figure measured
with the model, so a gap is an error, not a warning.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from core.checkpoint.ct2 import Ct2Model
from core.checkpoint.errors import CheckpointError

logger = logging.getLogger(__name__)

# Model options stored as scalars; a converted model is only faithful if they hold these values
# (Whisper: pre-norm GELU transformer, unscaled embeddings, no ALiBi, decoder starts from a token).
_CT2_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU
_EXPECTED_OPTIONS = {
    "decoder/activation": _CT2_GELU,
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
# Options that only steer CTranslate2's runtime (word alignment) or that we read elsewhere.
_INFORMATIONAL_OPTIONS = {
    "decoder/alignment_heads",
    "decoder/alignment_layer",
    "decoder/num_heads",
    "encoder/num_heads",
    "decoder/scale_embeddings",
    # Only read when decoder/alibi is on, which _EXPECTED_OPTIONS rules out.
    "decoder/alibi_use_positive_positions",
    "decoder/scale_alibi",
}


class _Mapper:
    """Hands out CTranslate2 weights by name, dequantized to float32, and records what was used."""

    def __init__(self, model: Ct2Model, source: Path):
        self.model = model
        self.source = source
        self.used: set[str] = set()
        self.state: dict[str, np.ndarray] = {}
        self.origin: dict[str, str] = {}  # transformers key -> CTranslate2 variable

    def take(self, name: str) -> np.ndarray:
        value = self.model.get(name)
        if value is None:
            raise CheckpointError(
                f"{self.source}: CTranslate2 variable {name!r} is missing; the model.bin is incomplete or not Whisper"
            )
        self.used.add(name)
        value = value.astype(np.float32)
        # The scale sits beside the stored tensor, not beside an alias of it (the tied projection).
        scale_name = f"{self.model.aliases.get(name, name)}_scale"
        scale = self.model.get(scale_name)
        if scale is not None:  # int8/int16 quantization stored round(w * scale)
            self.used.add(scale_name)
            scale = scale.astype(np.float32)
            value = value / (scale.reshape(-1, *([1] * (value.ndim - 1))) if scale.ndim else scale)
        return value

    def put(self, hf_key: str, value: np.ndarray, ct2_name: str) -> None:
        self.state[hf_key] = value
        self.origin[hf_key] = ct2_name

    def linear(self, ct2: str, hf: str, bias: bool = True) -> None:
        self.put(f"{hf}.weight", self.take(f"{ct2}/weight"), f"{ct2}/weight")
        if bias:
            self.put(f"{hf}.bias", self.take(f"{ct2}/bias"), f"{ct2}/bias")

    def layer_norm(self, ct2: str, hf: str) -> None:
        self.put(f"{hf}.weight", self.take(f"{ct2}/gamma"), f"{ct2}/gamma")
        self.put(f"{hf}.bias", self.take(f"{ct2}/beta"), f"{ct2}/beta")

    def fused(self, ct2: str, hf_prefix: str, parts: tuple[str, ...]) -> None:
        """Split a fused projection (q|k|v or k|v rows) back into the separate transformers ones.

        Whisper's key projection has no bias; CTranslate2 fused it with zeros, which we check, since
        a non-zero slice could not be represented and dropping it would change the model.
        """
        weight = self.take(f"{ct2}/weight")
        bias = self.take(f"{ct2}/bias")
        if weight.shape[0] % len(parts):
            raise CheckpointError(
                f"{self.source}: {ct2}/weight has {weight.shape[0]} rows, not {len(parts)} equal parts"
            )
        for part, w, b in zip(parts, np.split(weight, len(parts)), np.split(bias, len(parts)), strict=True):
            self.put(f"{hf_prefix}.{part}.weight", w, f"{ct2}/weight")
            if part == "k_proj":
                if np.any(b != 0):
                    raise CheckpointError(
                        f"{self.source}: {ct2}/bias has a non-zero key bias, which Whisper does not have"
                    )
            else:
                self.put(f"{hf_prefix}.{part}.bias", b, f"{ct2}/bias")

    def unused(self) -> list[str]:
        """Weights never handed out; one read through an alias counts as used (CTranslate2 stores
        equal tensors once and aliases the others to it)."""
        used = self.used | {self.model.aliases[a] for a in self.used if a in self.model.aliases}
        return sorted(
            n
            for n, v in self.model.variables.items()
            if (v.ndim > 0 or n.endswith("_scale")) and n not in used
        )


def layer_count(model: Ct2Model, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    indices = {int(m.group(1)) for n in [*model.variables, *model.aliases] if (m := pattern.match(n))}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"{prefix} layers are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def _map_layer(m: _Mapper, ct2: str, hf: str, cross_attention: bool) -> None:
    """One pre-norm transformer layer: self-attention, cross-attention (decoder only), feed-forward.

    CTranslate2 fuses q|k|v of self-attention and k|v of cross-attention (whose query reads the
    decoder state, not the encoder output, so it stays separate).
    """
    m.fused(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"))
    m.linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
    m.layer_norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
    if cross_attention:
        m.linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
        m.fused(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ("k_proj", "v_proj"))
        m.linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
        m.layer_norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
    m.linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
    m.linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
    m.layer_norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")


def map_whisper_weights(model: Ct2Model, source: Path) -> tuple[dict[str, np.ndarray], dict[str, str], bool]:
    """Map a CTranslate2 ``WhisperSpec`` onto ``WhisperForConditionalGeneration`` keys.

    Returns the float32 state dict, the CTranslate2 origin of every key, and whether the output
    projection is tied to the token embeddings (then ``proj_out.weight`` is left to the tie).
    """
    if model.spec != "WhisperSpec":
        raise CheckpointError(
            f"{source}: a {model.spec} model, not Whisper; only CTranslate2 Whisper folders convert"
        )
    for option, expected in _EXPECTED_OPTIONS.items():
        value = model.get(option)
        if value is not None and int(value) != expected:
            raise CheckpointError(f"{source}: option {option}={int(value)}, Whisper needs {expected}")
    scale = model.get("decoder/scale_embeddings")
    if scale is not None and float(scale) not in (0.0, 1.0):  # False, or a multiplier of 1
        raise CheckpointError(
            f"{source}: decoder/scale_embeddings={float(scale)}, Whisper does not scale embeddings"
        )
    unknown = sorted(
        n
        for n, v in model.variables.items()
        if v.ndim == 0
        and not n.endswith("_scale")  # int16 quantization scales are scalars, not options
        and n not in _EXPECTED_OPTIONS
        and n not in _INFORMATIONAL_OPTIONS
    )
    if unknown:
        logger.warning("%s: ignoring CTranslate2 options this converter does not know: %s", source, unknown)

    m = _Mapper(model, source)
    m.linear("encoder/conv1", "model.encoder.conv1")
    m.linear("encoder/conv2", "model.encoder.conv2")
    m.put(
        "model.decoder.embed_tokens.weight", m.take("decoder/embeddings/weight"), "decoder/embeddings/weight"
    )
    for side in ("encoder", "decoder"):
        positions = f"{side}/position_encodings/encodings"
        m.put(f"model.{side}.embed_positions.weight", m.take(positions), positions)
        m.layer_norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(layer_count(model, side)):
            _map_layer(m, f"{side}/layer_{i}", f"model.{side}.layers.{i}", cross_attention=side == "decoder")

    projection = m.take("decoder/projection/weight")
    if model.get("decoder/projection/bias") is not None:
        raise CheckpointError(
            f"{source}: decoder/projection/bias exists, but Whisper's output projection has no bias"
        )
    tied = model.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight" or np.array_equal(
        projection, m.state["model.decoder.embed_tokens.weight"]
    )
    if not tied:
        m.put("proj_out.weight", projection, "decoder/projection/weight")

    unused = m.unused()
    if unused:
        raise CheckpointError(f"{source}: CTranslate2 weights with no transformers counterpart: {unused}")
    return m.state, m.origin, tied


# ---------------------------------------------------------------------------------------------
# Config, generation config, processor
# ---------------------------------------------------------------------------------------------
