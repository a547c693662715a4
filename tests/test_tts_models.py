"""TTS engines that run a model in this process: piper (optional extra; skipped without it) and
the transformers engine on tiny random VITS and SpeechT5 models built from configs (offline)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from test_tts import SENTENCE, engine_or_skip, speaks
from transformers import (
    BertConfig,
    SpeechT5Config,
    SpeechT5ForTextToSpeech,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    VitsConfig,
    VitsModel,
    VitsTokenizer,
)

from data_prep.candidates import tts


@pytest.mark.skipif(importlib.util.find_spec("piper") is None, reason="optional extra `piper` not installed")
def test_piper_voice_speaks_reproducibly():
    engine = engine_or_skip("piper")
    (voice,) = engine.voices()
    assert speaks(engine, SENTENCE, voice) > 0.5
    a, _ = engine.synthesize(SENTENCE, voice, 2)
    assert np.array_equal(a, engine.synthesize(SENTENCE, voice, 2)[0])
    assert engine.accent(voice) == "en-us"
    slow = tts.get_engine("piper", length_scale_range=(1.4, 1.4)).synthesize(SENTENCE, voice, 0)[0]
    assert len(slow) > 1.2 * len(a)


CHARS = list("_ abcdefghijklmnopqrstuvwxyz'")


def _tokenizer(folder, add_blank: bool):
    (folder / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(CHARS)}))
    VitsTokenizer(
        str(folder / "vocab.json"), pad_token="_", unk_token="_", phonemize=False, add_blank=add_blank
    ).save_pretrained(folder)


def tiny_vits(folder, num_speakers: int = 1, upsample_rates: tuple[int, ...] = (4, 4)):
    """``upsample_rates`` (8, 8, 4), MMS-TTS's 256-sample hop, makes the random duration predictor's
    frame or so per character last long enough for generate's too_short_for_text check."""
    folder.mkdir()
    _tokenizer(folder, add_blank=True)
    torch.manual_seed(0)
    config = VitsConfig(
        vocab_size=len(CHARS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=16, flow_size=16,
        spectrogram_bins=17, upsample_initial_channel=16, upsample_rates=list(upsample_rates),
        upsample_kernel_sizes=[2 * r for r in upsample_rates],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]], duration_predictor_filter_channels=16,
        prior_encoder_num_flows=1, prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
        depth_separable_num_layers=1, duration_predictor_num_flows=1, sampling_rate=16_000,
        num_speakers=num_speakers, speaker_embedding_size=8 if num_speakers > 1 else 0,
    )  # fmt: skip
    VitsModel(config).save_pretrained(folder)
    return str(folder)


def tiny_speecht5(folder):
    """A tiny SpeechT5 + HiFi-GAN. The real tokenizer needs sentencepiece; a character tokenizer
    saved beside the model is what AutoTokenizer loads, which exercises the same engine code."""
    folder.mkdir()
    _tokenizer(folder, add_blank=False)
    torch.manual_seed(0)
    config = SpeechT5Config(
        vocab_size=len(CHARS), hidden_size=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, num_mel_bins=8,
        speech_decoder_prenet_units=16, speech_decoder_postnet_units=16, speech_decoder_postnet_layers=1,
        speaker_embedding_dim=8, pad_token_id=0,
    )  # fmt: skip
    model = SpeechT5ForTextToSpeech(config)
    with torch.no_grad():  # a random stop head ends after a frame or two: make it run to the length cap
        model.speech_decoder_postnet.prob_out.bias.fill_(-20.0)
    model.save_pretrained(folder)
    # A random HiFi-GAN at the default init is nearly silent; a larger init makes audible noise.
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=8, upsample_initial_channel=16, upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8],
            resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]], sampling_rate=16_000, initializer_range=1.0,
        )
    )  # fmt: skip
    vocoder.save_pretrained(folder / "vocoder")
    np.save(folder / "xvectors.npy", np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32))
    return str(folder)


def test_hf_vits_single_and_multi_speaker(tmp_path):
    single = tts.get_engine("hf", model=tiny_vits(tmp_path / "vits1"), device="cpu")
    assert single.available() and single.voices() == ["default"]
    a, rate = single.synthesize("hello there", "default", 1)
    assert rate == 16_000 and a.dtype == np.float32
    assert np.array_equal(a, single.synthesize("hello there", "default", 1)[0])
    params = single.params_for("default", 1)
    assert 0.87 <= params["speaking_rate"] <= 1.15 and params["model"] == single.model
    b, _ = single.synthesize("hello there", "default", 2)
    assert not np.array_equal(a[: len(b)], b[: len(a)])
    with pytest.raises(tts.SynthesisError, match="vocabulary"):
        single.synthesize("123 !!", "default", 0)

    multi = tts.get_engine("hf", model=tiny_vits(tmp_path / "vits3", num_speakers=3), device="cpu")
    assert multi.voices() == ["spk0", "spk1", "spk2"]
    s0, _ = multi.synthesize("hello there", "spk0", 1)
    s1, _ = multi.synthesize("hello there", "spk1", 1)
    assert not np.array_equal(s0[: len(s1)], s1[: len(s0)])


def test_hf_speecht5_voices_are_xvectors(tmp_path):
    folder = tiny_speecht5(tmp_path / "t5")
    engine = tts.get_engine(
        "hf",
        model=folder,
        vocoder=f"{folder}/vocoder",
        speaker_embeddings=f"{folder}/xvectors.npy",
        device="cpu",
    )
    assert engine.voices() == ["spk0", "spk1", "spk2"]
    a, rate = engine.synthesize("hello", "spk1", 1)
    assert rate == 16_000 and len(a) > 1000
    assert np.array_equal(a, engine.synthesize("hello", "spk1", 1)[0])
    assert not np.array_equal(a, engine.synthesize("hello", "spk2", 1)[0])
    assert not np.array_equal(a, engine.synthesize("hello", "spk1", 2)[0])  # prenet dropout follows the seed
    with pytest.raises(ValueError, match="speaker_embeddings=<file.npy>"):
        tts.get_engine("hf", model=folder, vocoder=f"{folder}/vocoder").voices()
    with pytest.raises(ValueError, match="nope.npy not found"):
        tts.get_engine(
            "hf", model=folder, vocoder=f"{folder}/vocoder", speaker_embeddings="nope.npy"
        ).voices()


def test_hf_rejects_unknown_models(tmp_path):
    BertConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' model; supported"):
        tts.get_engine("hf", model=str(tmp_path / "bert")).voices()
    with pytest.raises(tts.EngineUnavailable, match="cannot load"):
        tts.get_engine("hf", model=str(tmp_path / "missing")).voices()
