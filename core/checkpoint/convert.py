"""Convert a CTranslate2 Whisper folder (the faster-whisper format) into a transformers folder.

Writes a ``WhisperForConditionalGeneration`` + ``WhisperProcessor`` folder from the weights that
weights.py maps, the configs and the tokenizer; the written folder is reloaded and compared
tensor by tensor before it is renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from core import files
from core.checkpoint.ct2 import Ct2Model, read_ctranslate2_model
from core.checkpoint.errors import CheckpointError
from core.checkpoint.weights import layer_count, map_whisper_weights

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

# transformers builds and loads models under context managers that patch torch globally (weight
# init, tying), so two conversions overlapping in one process corrupt each other (measured: both
# lost the tied output projection); conversions in one process therefore run one at a time.
_CONVERT_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------
# CTranslate2 names -> transformers names
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
        encoder_layers=layer_count(model, "encoder"),
        decoder_layers=layer_count(model, "decoder"),
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
    tmp = files.temp_dir(dst.parent, f".{dst.name}.tmp-")  # umask permissions: a cache others share
    try:
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
