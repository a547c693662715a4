"""Tiny ASR checkpoints built from configs, and espeak-ng speech, for offline training tests.

The Whisper tokenizer here is byte-level with no merges (one token per byte) and Whisper's
special tokens in Whisper's order, so language and task ids sit where transformers expects
them; the models have 2 layers of width 64 (Whisper) or 32 (Wav2Vec2) and no dropout, so a few
steps on a few utterances are enough to see the loss fall and runs are deterministic.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Dataset, DatasetDict
from scipy.signal import resample_poly
from transformers import (
    AddedToken,
    GenerationConfig,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from core import files, schema

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(
    ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)

# Short commands, each said by a few espeak voices: real (synthesized) speech, varied speakers.
PHRASES = [
    "open the door",
    "call my office",
    "hello world",
    "turn the lights off",
    "play some music",
    "good morning",
    "press the pound key",
    "goodbye",
]


def speak(text: str, voice: str = "en-us", speed: int = 170) -> np.ndarray:
    """espeak-ng speech as 16 kHz float32 (espeak writes 22,050 Hz WAV; resample_poly reduces 16000/22050 itself)."""
    wav = subprocess.run(
        [ESPEAK, "-v", voice, "-s", str(speed), "--stdout", text], check=True, capture_output=True
    ).stdout
    x, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return resample_poly(x, 16_000, rate).astype(np.float32) if rate != 16_000 else x


def canonical_rows(
    items: list[tuple[str, str]], prefix: str, origin: str = "real", generator: dict | None = None
) -> list[dict]:
    """Canonical rows for (text, voice) pairs, said by espeak-ng."""
    return [
        schema.make_row(
            id=f"{prefix}-{i:04d}",
            samples=speak(text, voice),
            text=text,
            speaker=voice,
            origin=origin,
            generator=generator
            or ({"engine": "espeak-ng", "voice": voice} if origin == "synthetic" else None),
        )
        for i, (text, voice) in enumerate(items)
    ]


def write_prepared(
    output_dir: Path, train: list[dict], test: list[dict], source: list[dict] | None = None
) -> Path:
    """<output_dir>/data as the prepare stage writes it."""
    splits = {"target_train": train, "target_test": test, **({"source": source} if source else {})}
    dd = DatasetDict({k: Dataset.from_list(v, features=schema.features()) for k, v in splits.items()})
    files.atomic_save(dd, output_dir / "data")
    return output_dir / "data"


# ---------------------------------------------------------------------------------------------
# Whisper
# ---------------------------------------------------------------------------------------------
def whisper_tokenizer(folder: Path):
    bytes_to_unicode = _bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode.values())}
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in LANGUAGES],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]
    for s in specials:
        vocab[s] = len(vocab)
    tok = WhisperTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials], special_tokens=True)
    return tok, vocab


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what byte-level BPE vocabularies use)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tiny_whisper(folder: Path, multilingual: bool = False, max_length: int = 40) -> Path:
    """A 2-layer Whisper (d_model 64) with a byte-level tokenizer, saved like a real checkpoint."""
    tok, vocab = whisper_tokenizer(folder)
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(vocab),
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=sot,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    gen = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=max_length,
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        is_multilingual=multilingual,
    )
    if multilingual:
        gen.lang_to_id = {f"<|{c}|>": vocab[f"<|{c}|>"] for c in LANGUAGES}
        gen.task_to_id = {"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]}
    model.generation_config = gen
    model.save_pretrained(folder)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tok).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Wav2Vec2
# ---------------------------------------------------------------------------------------------
def tiny_wav2vec2(folder: Path) -> Path:
    """A 2-layer Wav2Vec2ForCTC (hidden 32) with an upper-case vocabulary, so training on our
    lower-case text has to build a new vocabulary and head (``ignore_mismatched_sizes``)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{chr(ord("A") + i): 3 + i for i in range(26)}, "'": 29}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tok = Wav2Vec2CTCTokenizer(
        str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    fe = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(folder)
    return folder
