"""Convert a CTranslate2 Whisper folder (the faster-whisper format) into a transformers folder.

Writes a ``WhisperForConditionalGeneration`` + ``WhisperProcessor`` folder. Every transformers
parameter must come from a CTranslate2 variable and every CTranslate2 weight must land
somewhere: a randomly initialized tensor left behind would silently ruin every figure measured
with the model, so a gap is an error, not a warning. The written folder is reloaded and compared
tensor by tensor before it is renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from core.checkpoint.ct2 import Ct2Model, read_ctranslate2_model
from core.checkpoint.errors import CheckpointError

logger = logging.getLogger(__name__)

# Part of the cache key: bump it when a converter change alters the written folder, so stale
# conversions are never reused.
CONVERTER_VERSION = "1"
# The files a conversion reads; their bytes (plus CONVERTER_VERSION) key the cache.
SOURCE_FILES = ("model.bin", "config.json", "tokenizer.json")
REPORT_FILE = "conversion.json"

# The English-only Whisper vocabulary: GPT-2's 50,257 BPE tokens (<|endoftext|> = 50256 last),
# 106 special tokens (startoftranscript 50257 ... notimestamps 50362), then 1,501 timestamps.
ENGLISH_VOCAB_SIZE = 51_864
TIMESTAMP_STEP = 0.02  # seconds per timestamp token (Whisper's 20 ms encoder frame pair)

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


# transformers builds and loads models under context managers that patch torch globally (weight
# init, tying), so two conversions overlapping in one process corrupt each other (measured: both
# lost the tied output projection); conversions in one process therefore run one at a time.
_CONVERT_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------
# CTranslate2 names -> transformers names
# ---------------------------------------------------------------------------------------------
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


def _layer_count(model: Ct2Model, prefix: str) -> int:
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
        "model.encoder.embed_positions.weight",
        m.take("encoder/position_encodings/encodings"),
        "encoder/position_encodings/encodings",
    )
    m.layer_norm("encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(_layer_count(model, "encoder")):
        _map_layer(m, f"encoder/layer_{i}", f"model.encoder.layers.{i}", cross_attention=False)

    m.put(
        "model.decoder.embed_tokens.weight", m.take("decoder/embeddings/weight"), "decoder/embeddings/weight"
    )
    m.put(
        "model.decoder.embed_positions.weight",
        m.take("decoder/position_encodings/encodings"),
        "decoder/position_encodings/encodings",
    )
    m.layer_norm("decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(_layer_count(model, "decoder")):
        _map_layer(m, f"decoder/layer_{i}", f"model.decoder.layers.{i}", cross_attention=True)

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
def _special_ids(tokenizer_json: Path) -> dict[str, int]:
    added = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("added_tokens", [])
    return {t["content"]: t["id"] for t in added if t.get("special")}


def _require(ids: dict[str, int], token: str, where: Path) -> int:
    if token not in ids:
        raise CheckpointError(f"{where}: special token {token} is missing; this is not a Whisper tokenizer")
    return ids[token]


def whisper_config(
    state: dict[str, np.ndarray], model: Ct2Model, ids: dict[str, int], tied: bool, source: Path
):
    """A ``WhisperConfig`` whose dimensions come from the tensor shapes (heads from the stored options)."""
    from transformers import WhisperConfig

    d_model = state["model.encoder.conv1.weight"].shape[0]
    vocab = state["model.decoder.embed_tokens.weight"].shape[0]
    if vocab != ENGLISH_VOCAB_SIZE:
        raise CheckpointError(
            f"{source}: vocabulary of {vocab} tokens; only English-only Whisper checkpoints ({ENGLISH_VOCAB_SIZE}, "
            "the `.en` models) are supported by this converter"
        )
    heads = {}
    for side in ("encoder", "decoder"):
        value = model.get(f"{side}/num_heads")
        if value is None:
            raise CheckpointError(f"{source}: {side}/num_heads is missing; cannot infer the attention heads")
        heads[side] = int(value)
        if d_model % heads[side]:
            raise CheckpointError(
                f"{source}: d_model {d_model} is not divisible by {heads[side]} {side} heads"
            )
    eot = _require(ids, "<|endoftext|>", source)
    return WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=state["model.encoder.conv1.weight"].shape[1],
        d_model=d_model,
        encoder_layers=_layer_count(model, "encoder"),
        decoder_layers=_layer_count(model, "decoder"),
        encoder_attention_heads=heads["encoder"],
        decoder_attention_heads=heads["decoder"],
        encoder_ffn_dim=state["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=state["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=_require(ids, "<|startoftranscript|>", source),
        tie_word_embeddings=tied,
        dtype="float32",
    )


def generation_config(config, ct2_config: dict, ids: dict[str, int], source: Path):
    """Whisper's decoding settings; the suppression lists and alignment heads come from CTranslate2."""
    from transformers import GenerationConfig

    missing = [k for k in ("suppress_ids", "suppress_ids_begin") if k not in ct2_config]
    if missing:
        raise CheckpointError(
            f"{source / 'config.json'}: missing {missing}; was it written by the Whisper converter?"
        )
    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads") or []],
        is_multilingual=False,
        no_timestamps_token_id=_require(ids, "<|notimestamps|>", source),
        prev_sot_token_id=_require(ids, "<|startofprev|>", source),
        # Whisper's limit on the first timestamp (1 s = 50 steps of 20 ms), as in OpenAI's decoder.
        max_initial_timestamp_index=50,
        return_timestamps=False,
        max_length=config.max_target_positions,
    )


def build_processor(tokenizer_json: Path, num_mel_bins: int, vocab_size: int):
    """Whisper's feature extractor plus the CTranslate2 folder's tokenizer, completed.

    CTranslate2 keeps only the BPE and special tokens; we register the specials as special (the
    timestamp decoding locates timestamps after the last special id), add the 1,501 timestamp
    tokens so the tokenizer covers the model's vocabulary, and set pad = eos, which Whisper
    collators need to pad labels.
    """
    from transformers import AddedToken, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    specials = sorted(_special_ids(tokenizer_json).items(), key=lambda kv: kv[1])
    tokenizer = WhisperTokenizer(
        tokenizer_file=str(tokenizer_json),
        extra_special_tokens=[token for token, _ in specials],
        pad_token="<|endoftext|>",
    )
    first_timestamp = specials[-1][1] + 1
    tokenizer.add_tokens(
        [
            AddedToken(
                f"<|{i * TIMESTAMP_STEP:.2f}|>", lstrip=False, rstrip=False, normalized=False, special=False
            )
            for i in range(vocab_size - first_timestamp)
        ]
    )
    if len(tokenizer) != vocab_size:
        raise CheckpointError(
            f"{tokenizer_json}: tokenizer has {len(tokenizer)} tokens, the model {vocab_size}"
        )
    return WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=num_mel_bins), tokenizer=tokenizer
    )


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------
def convert_ctranslate2_whisper(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Convert a CTranslate2 Whisper folder into a transformers Whisper folder at ``dst``.

    ``dst`` appears complete or not at all: everything is written to a temporary sibling that
    is renamed into place, so a killed conversion leaves no half folder. If ``dst`` already
    exists and is not empty (another process won the race), ``FileExistsError`` is raised and
    nothing is overwritten. Returns the load report (also written to ``dst/conversion.json``).
    """
    with _CONVERT_LOCK:
        return _convert(Path(src).expanduser().resolve(), Path(dst).expanduser())


def _convert(src: Path, dst: Path) -> dict:
    import torch
    from transformers import WhisperForConditionalGeneration

    if dst.is_dir() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} already exists; not overwriting it")
    for name in SOURCE_FILES:
        if not (src / name).is_file():
            raise CheckpointError(
                f"{src}: {name} is missing; a CTranslate2 Whisper folder needs {list(SOURCE_FILES)}"
            )
    start = time.perf_counter()
    ct2 = read_ctranslate2_model(src / "model.bin")
    ct2_config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    state, origin, tied = map_whisper_weights(ct2, src / "model.bin")
    ids = _special_ids(src / "tokenizer.json")
    config = whisper_config(state, ct2, ids, tied, src)

    model = WhisperForConditionalGeneration(config)
    expected = model.state_dict()
    tied_keys = {"proj_out.weight"} if tied else set()
    report = {
        "source": str(src),
        "missing_keys": sorted(set(expected) - set(state) - tied_keys),
        "unexpected_keys": sorted(set(state) - set(expected)),
        "mismatched_keys": sorted(
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
            for k, v in state.items()
            if k in expected and tuple(v.shape) != tuple(expected[k].shape)
        ),
        "tied_output_projection": tied,
        "ct2_variables_used": len({origin[k] for k in state}),
        "origin": origin,
    }
    _check_report(report, src)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    model.generation_config = generation_config(config, ct2_config, ids, src)
    processor = build_processor(src / "tokenizer.json", config.num_mel_bins, config.vocab_size)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would make a shared cache unreadable to other users
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        report.update(_verify_saved(tmp, state, tied, src))
        report["parameters"] = sum(p.numel() for p in model.parameters())
        report["seconds"] = round(time.perf_counter() - start, 2)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, dst)  # atomic; fails if dst is a non-empty folder
        except OSError as err:
            if dst.is_dir() and any(dst.iterdir()):
                raise FileExistsError(f"{dst} already exists; not overwriting it") from err
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "converted %s -> %s: %d tensors from %d CTranslate2 variables, %.1f M parameters, %.1f s",
        src,
        dst,
        len(state),
        report["ct2_variables_used"],
        report["parameters"] / 1e6,
        report["seconds"],
    )
    return report


def _check_report(report: dict, src: Path) -> None:
    problems = {k: report[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if report[k]}
    if problems:
        raise CheckpointError(f"{src}: conversion would leave the model inconsistent: {problems}")


def _verify_saved(folder: Path, state: dict[str, np.ndarray], tied: bool, src: Path) -> dict:
    """Reload the written folder the way users will and check that it holds exactly our tensors."""
    import torch
    from transformers import WhisperForConditionalGeneration

    reloaded, info = WhisperForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    loading = {
        k: sorted(map(str, info.get(k) or [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    _check_report(loading, src)
    params = reloaded.state_dict()
    differ = [k for k, v in state.items() if not torch.equal(params[k], torch.from_numpy(v))]
    if tied and not torch.equal(params["proj_out.weight"], params["model.decoder.embed_tokens.weight"]):
        differ.append("proj_out.weight (should be tied to the token embeddings)")
    if differ:
        raise CheckpointError(f"{src}: the saved model does not reload the converted tensors: {differ[:5]}")
    return {"reload": loading}
