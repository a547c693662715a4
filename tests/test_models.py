"""The Whisper/CTC branch: labels, decoding, length guards, transcribe, language handling."""

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from tiny_asr import needs_espeak, speak, tiny_wav2vec2, tiny_whisper
from transformers import AutoConfig

from core.asr import CTCASR, load_asr, load_for_training
from core.asr.collators import IGNORE_INDEX, CTCCollator, WhisperCollator, ctc_text, whisper_label_ids
from core.asr.ctc import build_ctc_vocab, ctc_processor_for
from recipe.data import apply_guards
from recipe.train_args import TrainArgs


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return tiny_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def whisper_ml_dir(tmp_path_factory):
    return tiny_whisper(tmp_path_factory.mktemp("whisper-ml"), multilingual=True)


@pytest.fixture(scope="module")
def ctc_dir(tmp_path_factory):
    return tiny_wav2vec2(tmp_path_factory.mktemp("w2v2"))


def test_ctc_text_keeps_letters_digits_apostrophes():
    assert ctc_text("Hello, World!  It's 9 o'clock.") == "hello world it's 9 o'clock"


def test_ctc_vocab_is_built_from_text_and_sorted():
    vocab = build_ctc_vocab(["Hello world", "OK?"])
    assert list(vocab)[:3] == ["[PAD]", "[UNK]", "|"]
    assert list(vocab)[3:] == sorted("helowrdk")


def test_ctc_decoding_keeps_repeated_letters(ctc_dir):
    vocab = build_ctc_vocab(["hello world"])
    processor = ctc_processor_for(str(ctc_dir), vocab, AutoConfig.from_pretrained(ctc_dir))
    asr = CTCASR(model=None, processor=processor)
    tok = processor.tokenizer
    labels = tok(["hello world"]).input_ids[0]
    label_ids = np.array([labels + [IGNORE_INDEX] * 3])
    # frames as a CTC model emits them: repeats, blanks (pad) between the two l's
    frames = ["h", "h", "e", "l", "[PAD]", "l", "l", "o", "|", "w", "o", "r", "l", "d", "[PAD]"]
    pred_ids = np.array([[vocab[f] for f in frames]])
    hyps, refs = asr.decode_predictions(SimpleNamespace(predictions=pred_ids, label_ids=label_ids))
    assert refs == ["hello world"]  # labels are symbols: grouping would give "helo world"
    assert hyps == ["hello world"]


def test_whisper_labels_english_only_and_multilingual(whisper_dir, whisper_ml_dir):
    en = load_asr(str(whisper_dir), device="cpu")
    tok = en.processor.tokenizer
    ids = whisper_label_ids(tok, ["hi"], en.decoder_start_token_id)[0]
    notimestamps = tok.convert_tokens_to_ids("<|notimestamps|>")
    assert ids[0] == notimestamps and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == " hi"
    with pytest.raises(ValueError, match="English-only"):
        load_asr(str(whisper_dir), language="fr")

    ml = load_asr(str(whisper_ml_dir), device="cpu", language="fr")
    gen = ml.model.generation_config
    assert gen.language == "fr" and gen.task == "transcribe" and gen.forced_decoder_ids is None
    tok = ml.processor.tokenizer
    ids = whisper_label_ids(tok, ["hi"], ml.decoder_start_token_id)[0]
    assert tok.convert_ids_to_tokens(ids[:3]) == ["<|fr|>", "<|transcribe|>", "<|notimestamps|>"]


def test_whisper_guards_drop_long_audio_and_labels(whisper_dir):
    asr = load_asr(str(whisper_dir), device="cpu")
    targs = TrainArgs()
    durations = np.array([3.0, 31.0, 3.0, 29.9])
    # the test tokenizer spends one token per byte: 500 letters are far over 448 tokens
    texts = ["short", "short", "x" * 500, "y" * 400]
    problems = asr.length_problems(durations, texts, targs)
    assert problems["audio_over_30s"].tolist() == [False, True, False, False]
    assert problems["label_over_448_tokens"].tolist() == [False, False, True, False]
    assert asr.label_lengths(["y" * 400])[0] == 400 + 3  # no-timestamps + space + text + end


def test_ctc_guard_needs_frames_for_repeats(ctc_dir):
    asr = load_for_training(TrainArgs(model_name_or_path=str(ctc_dir)), ["aaaa bb"])
    frames = asr._output_lengths([16_000])[0]  # ~50 frames per second
    durations = np.array([1.0, 1.0, 0.1])
    texts = ["ab" * (frames // 2), "a" * (frames // 2 + 2), "ab"]
    problems = asr.length_problems(durations, texts, TrainArgs())
    # "aaa..." needs a blank between each pair of equal letters: 2n-1 frames for n letters
    assert problems["label_longer_than_ctc_frames"].tolist() == [False, True, False]


@needs_espeak
def test_transcribe_returns_one_string_per_input(whisper_dir, ctc_dir):
    audio = [speak("hello world"), speak("goodbye")]
    for path in (whisper_dir, ctc_dir):
        asr = load_asr(str(path), device="cpu")
        out = asr.transcribe(audio, batch_size=1)
        assert len(out) == 2 and all(isinstance(t, str) for t in out)
    with pytest.raises(ValueError, match="30-s window"):
        load_asr(str(whisper_dir), device="cpu").transcribe([np.zeros(31 * 16_000, np.float32)])


def test_collators_shapes(whisper_dir, ctc_dir):
    examples = [
        {"audio": np.zeros(16_000, np.float32), "text": "ab"},
        {"audio": np.zeros(8_000, np.float32), "text": "abc d"},
    ]
    w = load_asr(str(whisper_dir), device="cpu")
    batch = WhisperCollator(w.processor, w.decoder_start_token_id)(examples)
    assert batch["input_features"].shape == (2, 80, 3000) and batch["attention_mask"].shape == (2, 3000)
    assert batch["labels"].shape == (2, 8) and (batch["labels"][0, 5:] == IGNORE_INDEX).all()
    c = load_for_training(TrainArgs(model_name_or_path=str(ctc_dir)), ["ab", "abc d"])
    batch = CTCCollator(c.processor)(examples)
    assert batch["input_values"].shape == (2, 16_000) and batch["attention_mask"][1].sum() == 8_000
    assert (
        batch["labels"].tolist()[0]
        == [c.processor.tokenizer.convert_tokens_to_ids(x) for x in "ab"] + [IGNORE_INDEX] * 3
    )


def test_ctc_new_head_and_freezing(ctc_dir):
    targs = TrainArgs(model_name_or_path=str(ctc_dir), freeze_feature_encoder=True, lora=False)
    asr = load_for_training(targs, ["hello there"])
    assert (
        asr.model.config.vocab_size == len(asr.processor.tokenizer) == len(build_ctc_vocab(["hello there"]))
    )
    assert asr.model.config.ctc_zero_infinity is True
    assert not any(p.requires_grad for p in asr.model.wav2vec2.feature_extractor.parameters())
    assert asr.model.lm_head.weight.requires_grad


def test_whisper_options_freeze_specaugment_lora(whisper_dir):
    targs = TrainArgs(
        model_name_or_path=str(whisper_dir), freeze_encoder=True, spec_augment=True, mask_time_prob=0.1
    )
    asr = load_for_training(targs, [])
    assert not any(p.requires_grad for p in asr.model.model.encoder.parameters())
    assert asr.model.config.apply_spec_augment and asr.model.config.mask_time_prob == 0.1

    lora = load_for_training(TrainArgs(model_name_or_path=str(whisper_dir), lora=True, lora_r=4), [])
    trainable = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # the saved model is a plain transformers folder with the adapters merged
    with torch.no_grad():
        for n, p in lora.model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    out = whisper_dir.parent / "merged"
    lora.save(out)
    assert not (out / "adapter_config.json").exists()
    merged = load_asr(str(out), device="cpu")
    base = load_asr(str(whisper_dir), device="cpu")
    q = "model.decoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.model.state_dict()[q], base.model.state_dict()[q])


def test_label_overhead_counts_prefix_and_end_once(whisper_dir, whisper_ml_dir):
    en = load_asr(str(whisper_dir), device="cpu")
    assert en.label_overhead() == 2  # <|notimestamps|> ... <|endoftext|>
    assert en.label_lengths(["ab cd"])[0] - en.label_overhead() == len(" ab cd")  # one token per byte here
    ml = load_asr(str(whisper_ml_dir), device="cpu", language="en")
    assert ml.label_overhead() == 4  # + language and task


def test_guards_drop_and_count_before_training(whisper_dir, caplog):
    asr = load_asr(str(whisper_dir), device="cpu")
    rows = Dataset.from_dict(
        {"duration": [2.0, 45.0, 2.0, 31.0, 3.0], "text": ["a", "b", "z" * 600, "z" * 600, "c"]}
    )
    with caplog.at_level(logging.INFO):
        keep, dropped = apply_guards(asr, rows, TrainArgs(), "real")
    assert keep.tolist() == [0, 4]
    # each row counts once, under its first reason
    assert dropped == {"audio_over_30s": 2, "label_over_448_tokens": 1}
    assert "real: dropped 2 of 5 utterances (40.0%): audio_over_30s" in caplog.text
    assert "real: kept 2 of 5 utterances" in caplog.text


def test_ctc_own_vocabulary_keeps_its_casing(ctc_dir):
    # the tiny checkpoint spells in capitals, like facebook/wav2vec2-base-960h
    asr = load_for_training(TrainArgs(model_name_or_path=str(ctc_dir), ctc_new_vocab=False), [])
    tok = asr.processor.tokenizer
    assert asr.upper_case and asr.label_text("Hello, it's me") == "HELLO IT'S ME"
    labels = asr.collator()([{"audio": np.zeros(16_000, np.float32), "text": "Hello, it's me"}])["labels"][0]
    assert tok.unk_token_id not in labels.tolist()
    assert tok.decode(labels.tolist(), group_tokens=False) == "HELLO IT'S ME"
