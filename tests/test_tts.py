"""TTS engines: every voice speaks, no text reaches a shell, the same seed gives the same audio,
a failed text is a SynthesisError, a missing engine names what to install; the registry builds
named and `module:Class` engines. The in-process model engines (piper, hf) are in test_tts_models.py.

espeak-ng coverage: all 8 x 101 voice x variant pairs take about a minute here, so the default run
speaks every base voice (with a different variant each) and every variant (rotating over the
base voices); the slow-marked test speaks the full cross product.
"""

from __future__ import annotations

import importlib.util
import stat

import numpy as np
import pytest

from data_prep.candidates import tts
from data_prep.candidates.tts import base, espeak, festival, flite

SUBPROCESS_ENGINES = ("espeak-ng", "flite", "festival")
# The English voices of espeak-ng 1.51 without MBROLA voices; a newer espeak-ng may add more.
ESPEAK_BASES = {
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
}
SENTENCE = "Please hold the line."

# Real `espeak-ng --voices=en` and `--voices=variant` rows (abridged), with the awkward cases:
# MBROLA voices sharing languages, a variant listed under en-us, a variant file with a space.
LISTING_EN = """Pty Language       Age/Gender VoiceName          File                 Other Languages
 2  en-gb           --/M      English_(Great_Britain) gmw/en               (en 2)
 3  en-uk           --/M      english-mb-en1     mb/mb-en1            (en-gb 3)(en 2)
 2  en-us           --/M      English_(America)  gmw/en-US            (en 3)
 5  en-gb-scotland  --/M      English_(Scotland) gmw/en-GB-scotland   (en 4)
 5  en-us           --/M      us-mbrola-2        mb/mb-us2            (en 7)
 9  en              --/F      en-german-1        mb/mb-de1-en
 5  variant         --/M      Storm              !v/Storm             (en-us 5)
 5  en-us-nyc       --/M      English_(America,_New_York_City) gmw/en-US-nyc
"""
LISTING_VARIANT = """Pty Language       Age/Gender VoiceName          File                 Other Languages
 5  variant         --/M      Mr_Serious         !v/Mr serious
 5  variant         --/M      Storm              !v/Storm             (en-us 5)
 5  variant         --/F      female3            !v/f3
 5  variant         70/M      male1              !v/m1
"""


def engine_or_skip(name: str, **options) -> tts.Engine:
    engine = tts.get_engine(name, **options)
    if not engine.available():
        pytest.skip(f"{name} is not installed")
    return engine


def speaks(engine: tts.Engine, text: str, voice: str, seed: int = 0) -> float:
    """Seconds of audio; fails unless it is float32 mono and clearly not silent."""
    samples, rate = engine.synthesize(text, voice, seed)
    assert samples.dtype == np.float32 and samples.ndim == 1 and rate >= 8000
    assert np.abs(samples).max() > 10 * base.SILENCE_PEAK
    return len(samples) / rate


# ---------------------------------------------------------------------------------------------
# Pure parts: registry, audio checks, voice listings
# ---------------------------------------------------------------------------------------------
def test_registry():
    assert tts.ENGINES == ("espeak-ng", "flite", "festival", "piper", "hf")
    with pytest.raises(ValueError, match="known engines: espeak-ng, flite"):
        tts.get_engine("sapi")
    with pytest.raises(TypeError):
        tts.get_engine("flite", voice_dir="/x")  # a typo in an option is an error, not ignored


class CustomEngine:
    """An engine of one's own, named by `module:Class`: built with no arguments."""

    def available(self):
        return True


def test_registry_builds_your_own_engine_and_caches_per_setting():
    assert isinstance(tts.get_engine("test_tts:CustomEngine"), CustomEngine)
    with pytest.raises(ModuleNotFoundError):
        tts.get_engine("no_such_module:Engine")
    custom = tts.cached_engine("test_tts:CustomEngine", 5.0)
    assert isinstance(custom, CustomEngine) and tts.cached_engine("test_tts:CustomEngine", 5.0) is custom
    flite_5 = tts.cached_engine("flite", 5.0)
    assert flite_5.timeout == 5.0 and tts.cached_engine("flite", 5.0) is flite_5
    assert tts.cached_engine("flite", 9.0).timeout == 9.0
    assert tts.cached_engine("hf", 5.0, "some/model").model == "some/model"
    assert tts.cached_engine("hf", 5.0).model == ""


def test_check_audio():
    with pytest.raises(tts.SynthesisError, match="silent"):
        base.check_audio(np.full(1000, 1e-4, np.float32), "x")
    with pytest.raises(tts.SynthesisError, match="NaN"):
        base.check_audio(np.array([0.5, np.nan], np.float32), "x")
    with pytest.raises(tts.SynthesisError, match="no audio"):
        base.check_audio(np.zeros(0, np.float32), "x")
    stereo = np.stack([np.full(10, 0.5), np.full(10, 0.1)], axis=1)
    mono = base.check_audio(stereo, "x")
    assert mono.dtype == np.float32 and mono.shape == (10,) and np.allclose(mono, 0.3)


def test_espeak_listing_skips_variants_and_missing_mbrola():
    rows = espeak.parse_listing(LISTING_EN)
    assert len(rows) == 8
    without = espeak.base_voices(rows, has_mbrola=lambda db: False)
    # en-uk is MBROLA en1: without the database espeak-ng speaks en-gb for it, a duplicate.
    assert list(without) == ["en-gb", "en-us", "en-gb-scotland", "en-us-nyc"]
    assert without["en-gb-scotland"].file == "gmw/en-GB-scotland"
    with_en1 = espeak.base_voices(rows, has_mbrola=lambda db: db in {"en1", "de1"})
    assert list(with_en1) == ["en-gb", "mb-en1", "en-us", "en-gb-scotland", "mb-de1-en", "en-us-nyc"]
    assert with_en1["mb-en1"].language == "en-uk"
    assert espeak.variant_names(espeak.parse_listing(LISTING_VARIANT)) == ["Mr serious", "Storm", "f3", "m1"]


def test_flite_and_festival_voice_lists():
    assert flite.parse_voice_list("Voices available: kal awb_time kal16 awb rms slt \n") == [
        "kal",
        "kal16",
        "awb",
        "rms",
        "slt",
    ]
    # A name that is not a plain identifier would be spliced into Scheme: it is dropped.
    assert festival.parse_voice_list("(kal_diphone ked_diphone x)(system\n") == ["kal_diphone", "ked_diphone"]


# ---------------------------------------------------------------------------------------------
# espeak-ng
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def espeak_engine():
    return engine_or_skip("espeak-ng")


def _espeak_parts(engine):
    voices = engine.voices()
    bases = [v for v in voices if "+" not in v]
    variants = [v.split("+", 1)[1] for v in voices if v.startswith(bases[0] + "+")]
    return voices, bases, variants


def test_espeak_voices_are_bases_times_variants(espeak_engine):
    voices, bases, variants = _espeak_parts(espeak_engine)
    assert ESPEAK_BASES <= set(bases)
    assert not any(b.startswith("mb-") or b == "en-uk" for b in bases) or espeak.mbrola_installed("en1")
    assert {"f3", "m1", "klatt", "Mr serious"} <= set(variants)
    assert len(voices) == len(set(voices)) == len(bases) * (len(variants) + 1)
    assert "en-gb-scotland+f3" in voices
    assert espeak_engine.accent("en-gb-scotland+f3") == "en-gb-scotland"
    assert tts.get_engine("espeak-ng").voices() == voices  # the listing is cached, not re-parsed differently


def test_every_espeak_base_voice_speaks(espeak_engine):
    _, bases, variants = _espeak_parts(espeak_engine)
    for i, b in enumerate(bases):  # each base with its own variant, to cover more pairs
        for voice in (b, f"{b}+{variants[(7 * i) % len(variants)]}"):
            assert speaks(espeak_engine, SENTENCE, voice) > 0.5, voice


def test_every_espeak_variant_speaks(espeak_engine):
    _, bases, variants = _espeak_parts(espeak_engine)
    silent = []
    for i, v in enumerate(variants):
        voice = f"{bases[i % len(bases)]}+{v}"
        samples, rate = espeak_engine.synthesize(SENTENCE, voice, i)
        if len(samples) / rate < 0.5:
            silent.append(voice)
    assert not silent


@pytest.mark.slow
def test_every_espeak_voice_speaks(espeak_engine):
    too_short = [v for v in espeak_engine.voices() if speaks(espeak_engine, SENTENCE, v) < 0.5]
    assert not too_short


def test_espeak_seed_sets_rate_and_pitch(espeak_engine):
    voice = "en-us+m1"
    params = [espeak_engine.params_for(voice, s) for s in range(40)]
    assert params == [espeak_engine.params_for(voice, s) for s in range(40)]
    assert all(150 <= p["rate_wpm"] <= 190 and 35 <= p["pitch"] <= 65 for p in params)
    assert len({p["rate_wpm"] for p in params}) > 10 and len({p["pitch"] for p in params}) > 10
    a, _ = espeak_engine.synthesize(SENTENCE, voice, 3)
    b, _ = espeak_engine.synthesize(SENTENCE, voice, 3)
    assert np.array_equal(a, b)
    c, _ = espeak_engine.synthesize(SENTENCE, voice, 4)
    assert params[3] != params[4] and not np.array_equal(a[: len(c)], c[: len(a)])
    slow = tts.get_engine("espeak-ng", rate_range=(120, 120)).synthesize(SENTENCE, voice, 0)[0]
    fast = tts.get_engine("espeak-ng", rate_range=(240, 240)).synthesize(SENTENCE, voice, 0)[0]
    assert len(slow) > 1.5 * len(fast)


def test_espeak_rejects_unlisted_voices(espeak_engine):
    # espeak-ng itself would silently ignore the unknown variant and speak en-us.
    for voice in ("en-us+nonexistent", "en-uk", "xx", "en-us+f3+m1"):
        with pytest.raises(ValueError, match="has no voice"):
            espeak_engine.synthesize(SENTENCE, voice, 0)


# ---------------------------------------------------------------------------------------------
# flite, festival
# ---------------------------------------------------------------------------------------------
def test_every_flite_voice_speaks_and_seed_is_reproducible():
    engine = engine_or_skip("flite")
    voices = engine.voices()
    assert voices and not any(v.endswith("_time") for v in voices)
    for v in voices:
        assert speaks(engine, SENTENCE, v) > 0.5, v
    a, rate = engine.synthesize(SENTENCE, voices[0], 5)
    assert np.array_equal(a, engine.synthesize(SENTENCE, voices[0], 5)[0])
    assert engine.params_for(voices[0], 5) != engine.params_for(voices[0], 6)
    slow = tts.get_engine("flite", stretch_range=(1.4, 1.4)).synthesize(SENTENCE, voices[0], 0)[0]
    fast = tts.get_engine("flite", stretch_range=(0.8, 0.8)).synthesize(SENTENCE, voices[0], 0)[0]
    assert len(slow) > 1.4 * len(fast)
    if "awb" in voices:
        assert engine.accent("awb") == "en-gb-scotland"


def test_every_festival_voice_speaks_and_seed_is_reproducible():
    engine = engine_or_skip("festival")
    voices = engine.voices()
    for v in voices:
        assert speaks(engine, SENTENCE, v, seed=5) > 0.5, v
    # festival takes ~0.7 s a call (it starts its Scheme interpreter): as few calls as will do.
    diphone = next(v for v in voices if not v.endswith("_hts"))  # HTS voices do not stretch
    first = engine.synthesize(SENTENCE, diphone, 0)[0]
    assert np.array_equal(first, engine.synthesize(SENTENCE, diphone, 0)[0])
    slow = tts.get_engine("festival", stretch_range=(1.4, 1.4)).synthesize(SENTENCE, diphone, 0)[0]
    assert len(slow) > 1.2 * len(first)  # the default range tops out at 1.15
    hts = [v for v in voices if v.endswith("_hts")]
    if hts:
        assert engine.params_for(hts[0], 0) == {"duration_stretch": 1.0}


# ---------------------------------------------------------------------------------------------
# Hostile texts, failures, missing engines
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SUBPROCESS_ENGINES)
def test_shell_syntax_is_spoken_not_run(name, tmp_path, monkeypatch):
    engine = engine_or_skip(name)
    home = tmp_path / "home"
    home.mkdir()
    (home / "keep.txt").write_text("still here")
    monkeypatch.setenv("HOME", str(home))  # so that a `rm -rf ~` that ran would show
    marker = tmp_path / "pwned"
    texts = [
        '"; rm -rf ~; echo "',
        f"$(touch {marker}) `touch {marker}`",
        "-v xx --help -w /dev/null",  # options, were the text put on the command line carelessly
        f'(system "touch {marker}")',  # Scheme, for festival
    ]
    voice = engine.voices()[0]
    for text in texts:
        assert speaks(engine, text, voice) > 0.4, text
    assert not marker.exists()
    assert (home / "keep.txt").read_text() == "still here"


def test_bad_texts_are_synthesis_errors(espeak_engine):
    for text in ("", "   \n", "x" * (base.MAX_TEXT_CHARS + 1), "nul\x00byte"):
        with pytest.raises(tts.SynthesisError):
            espeak_engine.synthesize(text, "en-us", 0)
    with pytest.raises(tts.SynthesisError, match="silent|no audio"):
        espeak_engine.synthesize(" - ", "en-us", 0)  # speaks nothing


def test_timeout_is_a_synthesis_error():
    engine = engine_or_skip("espeak-ng", timeout=0.001)
    with pytest.raises(tts.SynthesisError, match="timed out after 0.001 s"):
        engine.synthesize(SENTENCE * 50, "en-us", 0)


def test_engine_crash_is_a_synthesis_error(tmp_path):
    """A fake espeak-ng that lists one voice and one variant, then fails on synthesis."""
    exe = tmp_path / "fake-espeak-ng"
    en = LISTING_EN.splitlines()
    exe.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f"  --voices=en) printf '%s\\n' '{en[0]}' '{en[3]}' ;;\n"
        f"  --voices=variant) printf '%s\\n' '{en[0]}' ' 5  variant  --/F  female3  !v/f3' ;;\n"
        "  *) echo 'boom: cannot open sound device' >&2; exit 3 ;;\n"
        "esac\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    engine = tts.get_engine("espeak-ng", executable=str(exe))
    assert engine.voices() == ["en-us", "en-us+f3"]
    with pytest.raises(tts.SynthesisError, match="exited with 3: boom"):
        engine.synthesize(SENTENCE, "en-us+f3", 0)


@pytest.mark.parametrize(
    "name, apt",
    [
        ("espeak-ng", "apt-get install espeak-ng"),
        ("flite", "apt-get install flite"),
        ("festival", "apt-get install festival"),
    ],
)
def test_missing_engine_names_the_apt_package(name, apt):
    engine = tts.get_engine(name, executable="/nonexistent/tts-binary")
    assert not engine.available()
    with pytest.raises(tts.EngineUnavailable, match=apt):
        engine.voices()
    with pytest.raises(tts.EngineUnavailable, match=apt):
        engine.synthesize(SENTENCE, "en-us", 0)


def test_missing_models_say_what_to_pass_or_install(tmp_path):
    hf = tts.get_engine("hf")
    assert not hf.available()
    with pytest.raises(tts.EngineUnavailable, match="model=<Hub id or local folder>"):
        hf.voices()
    piper = tts.get_engine("piper", model=str(tmp_path / "voice.onnx"))
    assert not piper.available()
    # Without the optional package the install hint comes first; with it, the missing voice file.
    expected = "voice.onnx" if importlib.util.find_spec("piper") else "pip install piper-tts"
    with pytest.raises(tts.EngineUnavailable, match=expected):
        piper.voices()


def test_measure_speed_counts_failures(espeak_engine):
    report = tts.measure_speed(
        espeak_engine, [SENTENCE, "", "Goodbye for now."], ["en-us", "en-gb+f3"], seed=1
    )
    assert report.calls == 3 and report.failures == 1
    assert report.audio_seconds > 1.0 and report.wall_seconds > 0 and report.cpu_seconds > 0
    assert report.to_dict()["x_real_time"] == pytest.approx(report.audio_seconds / report.wall_seconds)
