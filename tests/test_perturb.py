"""Perturbations: each op does what its parameters say (measured on synthetic audio), recipes are
validated data, and a seed fixes both the audio and its provenance record."""

import json
import math
import time

import numpy as np
import pytest
import torch
import torchaudio
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


def quantization_snr_db(law: str, amplitude: float) -> float:
    # 1013 Hz is not a divisor of 8 kHz: the sine visits many codes, so the error is noise-like.
    t = torch.arange(2 * SR, dtype=torch.float64) / SR
    x = (amplitude * torch.sin(2 * math.pi * 1013.0 * t)).float()
    inner = slice(SR // 10, -SR // 10)
    return snr_db(x[inner], P.codec(x, law)[inner])


def test_codec_keeps_length_and_leaves_under_one_percent_above_4khz():
    x = 0.3 * torch.randn(2 * SR, generator=torch.Generator().manual_seed(0))
    for law in P.G711_LAWS:
        y = P.codec(x, law)
        assert y.numel() == x.numel()
        assert band_power(y, 4000, SR / 2) / band_power(y, 0, SR / 2) < 0.01
        # No band-pass: unlike telephone, the low band survives.
        assert band_power(y, 0, 300) / band_power(x, 0, 300) > 0.9
    assert not torch.equal(P.codec(x, "mu-law"), P.codec(x, "a-law"))


def test_codec_quantization_noise_follows_each_law():
    # 8-bit log companding: ~38 dB SNR at any mid level (6.02 * 8 + 4.77 - 20 log10(1 + ln A) for
    # A-law, - 20 log10(ln(1 + mu)) for mu-law), where a linear 8-bit code would lose 6 dB per halving.
    for law in P.G711_LAWS:
        for amplitude in (0.3, 0.03):
            assert 35.0 < quantization_snr_db(law, amplitude) < 41.0
    # Far below full scale mu-law's finer smallest step wins (A-law's is 3x coarser, ~9 dB).
    assert quantization_snr_db("mu-law", 0.001) > quantization_snr_db("a-law", 0.001) + 5.0


def test_a_law_codes_round_trip_and_match_the_standard_curve():
    codes = torch.arange(256)
    assert torch.equal(P.a_law_encoding(P.a_law_decoding(codes)), codes)
    x = torch.linspace(-1, 1, 10_001)
    # Half a step of the companded value, (1 + ln A) / 255 in log amplitude: above 1/A the error
    # is a constant fraction of the amplitude (log companding), below it a fraction of 1/A.
    error = (P.a_law_decoding(P.a_law_encoding(x)) - x).abs() / x.abs().clamp_min(1 / 87.6)
    assert float(error.max()) == pytest.approx(math.expm1((1 + math.log(87.6)) / 255), rel=0.01)
    # Linear below 1/A: a small value's compressed level is A x / (1 + ln A) of the half range.
    small = torch.tensor([0.005])
    assert int(P.a_law_encoding(small)) == int((87.6 * 0.005 / (1 + math.log(87.6)) + 1) / 2 * 255 + 0.5)
    with pytest.raises(ValueError, match="law"):
        P.codec(x, "g729")


@pytest.mark.parametrize("cutoff", [1000.0, 3217.0, 7000.0])
def test_bandlimit_removes_what_is_above_the_cutoff_and_keeps_what_is_below(cutoff):
    x = 0.3 * torch.randn(2 * SR, generator=torch.Generator().manual_seed(0))
    y = P.bandlimit(x, cutoff)
    assert y.numel() == x.numel()
    assert band_power(y, cutoff, SR / 2) / band_power(y, 0, SR / 2) < 0.01
    assert 10 * math.log10(band_power(y, 0, 0.9 * cutoff) / band_power(x, 0, 0.9 * cutoff)) == pytest.approx(
        0.0, abs=1.0
    )
    tone_below = sine(1.0, 0.5 * cutoff)
    inner = slice(SR // 10, -SR // 10)  # the abrupt start and end of the tone are broadband
    assert torch.allclose(P.bandlimit(tone_below, cutoff)[inner], tone_below[inner], atol=1e-3)


def vowel(f0: float, formant_hz: float = 1500.0, bandwidth_hz: float = 100.0, seconds: float = 2.0):
    """A pulse train at ``f0`` through one two-pole resonator: a vowel with one formant."""
    x = torch.zeros(int(seconds * SR), dtype=torch.float64)
    x[:: round(SR / f0)] = 1.0
    r, theta = math.exp(-math.pi * bandwidth_hz / SR), 2 * math.pi * formant_hz / SR
    a = torch.tensor([1.0, -2 * r * math.cos(theta), r * r], dtype=torch.float64)
    b = torch.tensor([1 - r, 0.0, 0.0], dtype=torch.float64)
    x = torchaudio.functional.lfilter(x, a, b, clamp=False)
    return (0.5 * x / x.abs().max()).float()


def centroid_hz(wav: torch.Tensor) -> float:
    spec = torch.fft.rfft(wav.double() * torch.hann_window(wav.numel(), dtype=torch.float64)).abs() ** 2
    return float((torch.fft.rfftfreq(wav.numel(), 1 / SR) * spec).sum() / spec.sum())


def period_hz(wav: torch.Tensor) -> float:
    """The pulse rate: the autocorrelation's highest peak at lags of 2.5-25 ms (400-40 Hz)."""
    y = wav.double() - wav.double().mean()
    ac = torch.fft.irfft(torch.fft.rfft(y, 2 * y.numel()).abs() ** 2)
    return SR / (40 + int(ac[40:400].argmax()))


@pytest.mark.parametrize("f0", [100.0, 130.0, 220.0])
@pytest.mark.parametrize("alpha", [0.85, 0.9, 1.1, 1.15])
def test_formant_moves_the_envelope_by_alpha_and_keeps_f0_and_duration(f0, alpha):
    x = vowel(f0)
    y = P.formant(x, alpha)
    assert y.numel() == x.numel()
    assert centroid_hz(y) / centroid_hz(x) == pytest.approx(alpha, rel=0.05)
    assert period_hz(y) == pytest.approx(period_hz(x), rel=0.02)
    assert float(y.pow(2).sum()) == pytest.approx(float(x.pow(2).sum()), rel=1e-4)


def test_formant_alpha_one_is_the_identity_and_the_warp_keeps_nyquist():
    x = vowel(130.0)
    assert torch.allclose(P.formant(x, 1.0), x, atol=1e-5)
    freqs = torch.tensor([0.0, 1000.0, 3000.0, 8000.0])
    for alpha in (0.85, 1.15):
        source = P.vtlp_source_hz(freqs, alpha)
        assert torch.allclose(source[:3], freqs[:3] / alpha) and float(source[3]) == pytest.approx(8000.0)
    assert P.formant(x[:100], 1.1).numel() == 100  # shorter than one analysis frame


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


def test_every_op_and_the_channel_recipe_replay_from_their_record():
    everything = P.recipe_from_dict([{"op": op} for op in P.OPS])  # p defaults to 1
    x = harmonic(1.0)
    for recipe in (everything, P.load_recipe("channel")):
        for seed in range(3):
            y, record = P.perturb(x, recipe, seed)
            if recipe is everything:
                assert [op["op"] for op in record["ops"]] == list(P.OPS)
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
