"""Perturbations: each op does what its parameters say (measured on synthetic audio), recipes are
validated data, and a seed fixes both the audio and its provenance record."""

import json
import math
import time

import numpy as np
import pytest
import torch
from conftest import tone, write_wav

from data_prep.candidates import perturb as P

SR = 16_000


def harmonic(seconds=2.0, freq=220.0, seed=0) -> torch.Tensor:
    return torch.from_numpy(tone(seconds, SR, freq=freq, seed=seed))


def sine(seconds=2.0, freq=440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (0.5 * torch.sin(2 * math.pi * freq * t)).float()


def peak_hz(wav: torch.Tensor, below_hz: float = 4000.0) -> float:
    """Frequency of the strongest spectral peak (Hann window; 0.5 Hz bins on a 2 s clip)."""
    spec = torch.fft.rfft(wav.double() * torch.hann_window(wav.numel(), dtype=torch.float64)).abs()
    freqs = torch.fft.rfftfreq(wav.numel(), 1 / SR)
    spec[freqs > below_hz] = 0
    return float(freqs[spec.argmax()])


def band_power(wav: torch.Tensor, lo: float, hi: float) -> float:
    spec = torch.fft.rfft(wav.double()).abs() ** 2
    freqs = torch.fft.rfftfreq(wav.numel(), 1 / SR)
    return float(spec[(freqs >= lo) & (freqs < hi)].sum())


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    return 10 * math.log10(float(clean.double().pow(2).sum()) / float((noisy - clean).double().pow(2).sum()))


# ---------------------------------------------------------------------------------------------
# Signal functions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [0.85, 0.9, 1.0, 1.137, 1.15])
def test_speed_changes_duration_by_one_over_factor(factor):
    x = harmonic(2.0)
    y = P.speed(x, factor)
    assert y.numel() / x.numel() == pytest.approx(1 / factor, rel=0.01)
    # Resampling moves the pitch with the rate, as Kaldi-style speed perturbation does.
    assert peak_hz(y) == pytest.approx(peak_hz(x) * factor, rel=0.01)


@pytest.mark.parametrize("factor", [0.85, 1.15])
def test_tempo_changes_duration_not_pitch(factor):
    x = sine(2.0, 440.0)
    y = P.tempo(x, factor)
    assert y.numel() / x.numel() == pytest.approx(1 / factor, rel=0.01)
    assert peak_hz(y) == pytest.approx(440.0, rel=0.01)
    # WSOLA keeps the waveform coherent: a sine keeps its energy (a phase vocoder loses some).
    inner = slice(SR // 10, -SR // 10)
    assert float(y[inner].pow(2).mean()) == pytest.approx(float(x.pow(2).mean()), rel=0.05)


def test_time_stretch_to_the_same_length_is_the_identity():
    x = harmonic(1.0)
    assert torch.allclose(P.time_stretch(x, x.numel()), x, atol=1e-5)


@pytest.mark.parametrize("semitones", [-4.0, -1.5, 2.0, 3.3])
def test_pitch_shift_moves_frequency_and_keeps_duration(semitones):
    x = sine(2.0, 440.0)
    y = P.pitch_shift(x, semitones)
    assert y.numel() == x.numel()
    assert peak_hz(y) == pytest.approx(440.0 * 2 ** (semitones / 12), rel=0.01)
    inner = slice(SR // 10, -SR // 10)
    assert float(y[inner].pow(2).mean()) == pytest.approx(float(x.pow(2).mean()), rel=0.05)


def test_pitch_shift_is_fast():
    # torchaudio's pitch_shift took ~25 s on this 10 s clip; ours must stay far below real time.
    x = harmonic(10.0)
    P.pitch_shift(x, 1.7)
    t0 = time.perf_counter()
    P.pitch_shift(x, 1.7)
    assert time.perf_counter() - t0 < 1.0


def test_gain_in_db_is_exact():
    x = harmonic(1.0)
    for db in (-12.5, 0.0, 3.0):
        y = P.gain(x, db)
        assert 20 * math.log10(float(y.pow(2).sum().sqrt() / x.pow(2).sum().sqrt())) == pytest.approx(
            db, abs=1e-4
        )


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
@pytest.mark.parametrize("target", [0.0, 10.0, 25.0])
def test_noise_reaches_the_requested_snr(color, target):
    x = harmonic(2.0)
    noise = P.colored_noise(x.numel(), color, torch.Generator().manual_seed(3))
    y = P.add_noise(x, noise, target)
    assert abs(snr_db(x, y) - target) < 0.5


@pytest.mark.parametrize("color, octave_ratio", [("white", 1.0), ("pink", 2.0), ("brown", 4.0)])
def test_noise_colors_have_their_spectral_slope(color, octave_ratio):
    # Power per octave band: flat-per-Hz white doubles each octave, pink is equal per octave,
    # brown halves; so P(1-2 kHz) / P(2-4 kHz) = 1/2, 1, 2 -- i.e. ratio per Hz 1, 2, 4.
    n = P.colored_noise(10 * SR, color, torch.Generator().manual_seed(0))
    assert n.std() == pytest.approx(1.0, rel=1e-3)
    per_hz_ratio = (band_power(n, 1000, 2000) / 1000) / (band_power(n, 2000, 4000) / 2000)
    assert per_hz_ratio == pytest.approx(octave_ratio, rel=0.1)


def schroeder_rt60(rir: torch.Tensor) -> float:
    """RT60 from the -5..-25 dB slope of the backward-integrated energy decay (ISO 3382 T20)."""
    edc = torch.flip(torch.cumsum(torch.flip(rir.double() ** 2, [0]), 0), [0])
    edc_db = 10 * torch.log10(edc / edc[0])
    i5, i25 = int((edc_db > -5).sum()), int((edc_db > -25).sum())
    return 60.0 * (i25 - i5) / SR / 20.0


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_reverb_keeps_length_and_energy_and_has_its_rt60(rt60):
    rir = P.synthetic_rir(rt60, drr_db=-10.0, generator=torch.Generator().manual_seed(1))
    assert schroeder_rt60(rir) == pytest.approx(rt60, rel=0.15)
    direct, tail = float(rir[0] ** 2), float(rir[1:].pow(2).sum())
    assert 10 * math.log10(direct / tail) == pytest.approx(-10.0, abs=0.01)
    x = harmonic(1.5)
    y = P.reverberate(x, rir)
    assert y.numel() == x.numel()
    assert float(y.pow(2).sum()) == pytest.approx(float(x.pow(2).sum()), rel=1e-4)
    assert not torch.allclose(y, x, atol=1e-2)


def test_telephone_leaves_under_one_percent_above_4khz():
    x = 0.3 * torch.randn(2 * SR, generator=torch.Generator().manual_seed(0))
    y = P.telephone(x)
    assert y.numel() == x.numel()
    total = band_power(y, 0, SR / 2)
    assert band_power(y, 4000, SR / 2) / total < 0.01
    assert band_power(y, 0, 150) / total < 0.01  # the low band edge is real too
    assert band_power(y, 500, 3000) / total > 0.7


def test_telephone_mu_law_quantizes_but_keeps_speech_band():
    x = sine(1.0, 1000.0)
    y = P.telephone(x)[SR // 10 : -SR // 10]  # the filters' start-up transient aside
    # A mid-band tone passes at its level (Butterworth passband); mu-law noise is ~35 dB down.
    assert 10 * math.log10(float(y.pow(2).mean()) / float(x.pow(2).mean())) == pytest.approx(0.0, abs=1.0)
    assert band_power(y, 980, 1020) / band_power(y, 0, SR / 2) > 0.99
    assert band_power(y, 980, 1020) / band_power(y, 0, SR / 2) < 0.99999  # but it is quantized


def test_stereo_input_is_refused():
    with pytest.raises(ValueError, match="mono"):
        P.speed(torch.zeros(2, 100), 1.1)


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_audio_and_record_different_seed_differs():
    recipe = P.load_recipe("default")
    x = harmonic(1.0)
    y1, r1 = P.perturb(x, recipe, seed=123)
    y2, r2 = P.perturb(x, recipe, seed=123)
    assert torch.equal(y1, y2) and r1 == r2
    assert json.dumps(r1, sort_keys=True) == json.dumps(r2, sort_keys=True)
    records = {json.dumps(P.perturb(x, recipe, seed=s)[1]["ops"], sort_keys=True) for s in range(20)}
    assert len(records) == 20


def test_record_replays_the_audio():
    recipe = P.load_recipe("default")
    x = harmonic(1.0)
    for seed in range(8):
        y, record = P.perturb(x, recipe, seed)
        replay = P.apply_ops(x, json.loads(json.dumps(record["ops"]))) * record["peak_scale"]
        assert torch.allclose(y, replay, atol=1e-6)


def test_every_builtin_recipe_draws_within_its_ranges():
    for name in P.BUILTIN_RECIPES:
        recipe = P.load_recipe(name)
        rng = np.random.default_rng(0)
        for _ in range(200):
            ops = P.sample_ops(recipe, rng)
            assert len(ops) >= recipe.min_ops
            specs = {s.op: s for s in recipe.ops}
            for op in ops:
                for key, value in op.items():
                    spec = specs[op["op"]].params.get(key)
                    if isinstance(spec, list) and len(spec) == 2 and all(isinstance(v, float) for v in spec):
                        assert spec[0] <= value <= spec[1]


def test_min_ops_and_probabilities():
    recipe = P.recipe_from_dict(
        {
            "min_ops": 1,
            "ops": [
                {"op": "gain", "p": 0.0, "db": 1.0},
                {"op": "speed", "p": 0.0},
                {"op": "tempo", "p": 0.2},
            ],
        }
    )
    rng = np.random.default_rng(0)
    draws = [P.sample_ops(recipe, rng) for _ in range(300)]
    assert all(len(d) >= 1 for d in draws)
    # With a positive-p op left, the top-up never picks a p=0 op.
    assert all(op["op"] == "tempo" for d in draws for op in d)
    none = P.recipe_from_dict({"min_ops": 0, "ops": [{"op": "gain", "p": 0.0}]})
    assert P.sample_ops(none, rng) == []
    y, record = P.perturb(harmonic(0.5), none, seed=1)
    assert record["ops"] == [] and torch.equal(y, harmonic(0.5))


def test_peak_is_limited_and_recorded():
    recipe = P.recipe_from_dict([{"op": "gain", "db": 30.0}])
    y, record = P.perturb(harmonic(0.5), recipe, seed=0)
    assert float(y.abs().max()) == pytest.approx(P.PEAK_LIMIT, rel=1e-5)
    assert record["peak_scale"] < 0.1


@pytest.mark.parametrize(
    "bad, match",
    [
        ([{"op": "warp"}], "op #0"),
        ([{"op": "speed", "rate": [0.9, 1.1]}], "no parameter"),
        ([{"op": "speed", "factor": [1.2, 0.9]}], "lo > hi"),
        ([{"op": "speed", "factor": [0.9, 1.0, 1.1]}], "choice"),
        ([{"op": "pitch", "semitones": 30}], r"\[-12.0, 12.0\]"),
        ([{"op": "gain", "p": 1.5}], "probability"),
        ({"ops": [], "min_ops": 1}, "min_ops"),
        ({"ops": [{"op": "gain"}], "extra": 1}, "unknown recipe key"),
        ("speed", "list of ops"),
    ],
)
def test_bad_recipes_are_refused_with_the_reason(bad, match):
    with pytest.raises(ValueError, match=match):
        P.recipe_from_dict(bad, source="my.yaml")


def test_recipe_files_yaml_and_json(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "min_ops: 1\nops:\n  - {op: noise, p: 1.0, snr_db: {choice: [10, 20]}, color: pink}\n"
    )
    (tmp_path / "r.json").write_text(json.dumps([{"op": "gain", "db": [-3.0, 3.0]}]))
    y_recipe = P.load_recipe(str(tmp_path / "r.yaml"))
    ops = P.sample_ops(y_recipe, np.random.default_rng(0))
    assert ops[0]["op"] == "noise" and ops[0]["snr_db"] in (10, 20) and ops[0]["color"] == "pink"
    assert P.load_recipe(str(tmp_path / "r.json")).ops[0].op == "gain"
    with pytest.raises(FileNotFoundError, match="builtin"):
        P.load_recipe(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("ops:\n  - {op: gain, volume: 3}\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        P.load_recipe(str(tmp_path / "bad.yaml"))


def test_noise_and_rir_from_folders(tmp_path):
    rng = np.random.default_rng(0)
    write_wav(tmp_path / "noise" / "fan.wav", (0.1 * rng.standard_normal(SR // 2)).astype(np.float32))
    write_wav(
        tmp_path / "noise" / "babble_8k.wav", (0.1 * rng.standard_normal(8000 * 3)).astype(np.float32), 8000
    )
    rir = P.synthetic_rir(0.4, 3.0, torch.Generator().manual_seed(0)).numpy()
    write_wav(tmp_path / "rirs" / "room.wav", 0.5 * rir / np.abs(rir).max())
    recipe = P.recipe_from_dict(
        [
            {"op": "reverb", "dir": str(tmp_path / "rirs")},
            {"op": "noise", "snr_db": 12.0, "dir": str(tmp_path / "noise")},
        ]
    )
    x = harmonic(1.0)
    files = set()
    for seed in range(6):
        y, record = P.perturb(x, recipe, seed)
        reverb, noise = record["ops"]
        assert reverb["file"] == "room.wav" and "rt60" not in reverb
        assert (
            noise["file"] in ("fan.wav", "babble_8k.wav")
            and 0 <= noise["offset_frac"] < 1
            and "color" not in noise
        )
        files.add(noise["file"])
        reverberant = P.apply_op(x, reverb)
        assert abs(snr_db(reverberant, y / record["peak_scale"]) - 12.0) < 0.5
    assert files == {"fan.wav", "babble_8k.wav"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no audio files"):
        P.sample_ops(
            P.recipe_from_dict([{"op": "noise", "dir": str(tmp_path / "empty")}]), np.random.default_rng(0)
        )
