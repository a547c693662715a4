"""Cheap checks around synthesis: texts a voice cannot say are never sent to it, and audio whose
length or level does not fit its text is dropped, counted by reason."""

import numpy as np
import pytest
from test_generate import FakeEngine, prepared, run_generate

from data_prep.candidates import tts
from data_prep.candidates.speakable import audio_problem, foreign_letters, language_of, unspeakable_symbols

ARABIC = "مرحبا بكم في خدمة العملاء"


def test_symbols_and_scripts():
    assert unspeakable_symbols("call me 📞 now ✨") == "📞✨"
    assert unspeakable_symbols("pay $5 + 10% tax, café") == ""  # currency and math are read aloud
    assert language_of("en-gb-scotland") == "en" and language_of("en_US") == "en" and language_of("") == ""
    assert foreign_letters(ARABIC, "en") == ARABIC.replace(" ", "")
    assert foreign_letters(ARABIC, "ar") == ""
    assert foreign_letters("Привет, café", "en") == "Приветé"
    # English's alphabet is a-z: an accented letter marks another language's text ("contraseña")
    assert foreign_letters("crème brûlée", "en") == "èûé"
    assert foreign_letters("crème brûlée", "fr") == ""  # French has no alphabet listed: the script check only
    assert foreign_letters(ARABIC, "xx") == ""  # a language not in the table is not checked


def test_audio_that_does_not_fit_its_text():
    rate = 16_000
    speech = 0.3 * np.sin(np.linspace(0, 2000, rate * 2)).astype(np.float32)  # 2 s at -10 dBFS
    assert audio_problem(speech, rate, "please hold the line") is None
    assert audio_problem(speech * 0.005, rate, "please hold the line")[0] == "too_quiet"
    letter_names = np.tile(speech, 7)  # 14 s for a 20-letter line
    assert audio_problem(letter_names, rate, "press one for sales now")[0] == "too_long_for_text"
    assert audio_problem(speech[:3000], rate, "please enter your personal identification number")[0] == (
        "too_short_for_text"
    )
    assert audio_problem(speech[: rate // 2], rate, "5") is None  # a digit read as a word


class EnglishEngine(FakeEngine):
    """The fake engine's voices, declared English (the check needs a voice's language)."""

    def accent(self, voice):
        return "en-us"

    def synthesize(self, text, voice, seed):
        samples, rate = super().synthesize(text, voice, seed)
        if "QUIET" in text:
            samples = samples * 0.004
        return samples, rate


def test_generate_never_sends_a_foreign_script_or_an_emoji_and_counts_both(tmp_path):
    exp, corpus = prepared(tmp_path)
    corpus.write_text(corpus.read_text() + f"{ARABIC}\nhappy birthday 🎂\nQUIET please\n")
    report = run_generate(
        exp, corpus, "--engines", "test_speakable:EnglishEngine", "--copies_per_utterance", "0"
    )
    plan = report["plan"]
    assert plan["texts"]["unspeakable_symbols"] == 1
    voices = len(plan["engines"]["test_speakable:EnglishEngine"]["voices"])
    assert plan["engines"]["test_speakable:EnglishEngine"]["refused_foreign_script"] == voices
    assert report["failures"]["too_quiet"] == voices
    assert report["failures"]["synthesis_error"] == voices  # the FAIL line, as before


def test_espeak_reading_arabic_as_letter_names_is_caught_after_synthesis_too():
    engine = tts.get_engine("espeak-ng")
    if not engine.available():
        pytest.skip("espeak-ng is not installed")
    voice = next(v for v in engine.voices() if v.startswith("en-us"))
    samples, rate = engine.synthesize(ARABIC, voice, seed=0)
    assert audio_problem(samples, rate, ARABIC)[0] == "too_long_for_text"
