"""bench/non_target.py: the Sphinx transcript formats, the recordings it picks up, the tolerance."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from conftest import REPO, tone, write_wav

from core import schema

_spec = importlib.util.spec_from_file_location("non_target", REPO / "bench" / "non_target.py")
nt = importlib.util.module_from_spec(_spec)
sys.modules["non_target"] = nt  # its dataclasses look their module up there
_spec.loader.exec_module(nt)

CARDS = "<s> ten of clubs  </s> (001)\n<s> four queen of clubs  </s> (002)\n"
LIBRIVOX = (
    "<s> he was not an ill disposed young man </s> (sense_and_sensibility_01_austen_64kb-0880)\n"
    "<s> he might even have been made amiable himself </s> (sense_and_sensibility_01_austen_64kb-0930)\n"
)


def test_cards_format_short_ids_and_double_spaces():
    assert nt.parse_sphinx_transcript(CARDS) == {"001": "ten of clubs", "002": "four queen of clubs"}


def test_librivox_format_ids_are_file_stems():
    parsed = nt.parse_sphinx_transcript(LIBRIVOX)
    assert parsed["sense_and_sensibility_01_austen_64kb-0880"] == "he was not an ill disposed young man"
    assert len(parsed) == 2


def test_lines_without_sentence_markers_parse_too():
    # tidigits.lsn's form: the same line without <s> </s>.
    assert nt.parse_sphinx_transcript("two nine three four zero (man.ah.2934za)\n\n") == {
        "man.ah.2934za": "two nine three four zero"
    }


@pytest.mark.parametrize(
    "bad, why",
    [("<s> ten of clubs </s>", "not `<s> words"), ("a (1)\nb (1)", "transcribed twice")],
)
def test_a_line_without_id_or_a_repeated_id_is_an_error_naming_the_line(bad, why):
    with pytest.raises(ValueError, match=why) as e:
        nt.parse_sphinx_transcript(bad, "x.transcription")
    assert "x.transcription, line" in str(e.value)


def test_recordings_are_matched_to_transcripts_and_the_rest_is_listed(tmp_path):
    write_wav(tmp_path / "cards" / "001.wav", tone(0.5))
    (tmp_path / "cards" / "cards.transcription").write_text(
        "<s> ten of clubs </s> (001)\n<s> gone </s> (009)\n"
    )
    pcm = (tone(0.5) * 32767).astype("<i2")
    (tmp_path / "digits").mkdir()
    pcm.tofile(tmp_path / "digits" / "12.raw")
    (tmp_path / "digits" / "transcription").write_text("<s> one two </s> (12)\n")
    (tmp_path / "lonely.raw").write_bytes(b"\0\0" * 800)

    listing = nt.read_pocketsphinx(tmp_path)
    by_id = {u.id: u for u in listing.utterances}
    assert sorted(by_id) == ["pocketsphinx-cards-001", "pocketsphinx-digits-12"]
    assert by_id["pocketsphinx-cards-001"].text == "ten of clubs"
    assert by_id["pocketsphinx-cards-001"].speaker == "cards"
    raw = schema.decode_audio({"bytes": by_id["pocketsphinx-digits-12"].audio_bytes})
    assert len(raw) == len(pcm) and np.allclose(raw, pcm / 32768.0, atol=1e-4)
    assert any("1 transcribed utterances have no .wav" in n for n in listing.notes)
    assert any("no transcript" in n and "lonely.raw" in n for n in listing.notes)


def test_installed_testdata_yields_the_cards_and_librivox_recordings():
    if not nt.POCKETSPHINX_DATA.is_dir():
        pytest.skip(f"pocketsphinx-testdata is not installed ({nt.POCKETSPHINX_APT})")
    listing = nt.read_pocketsphinx(nt.POCKETSPHINX_DATA)
    speakers = sorted({u.speaker for u in listing.utterances})
    assert speakers == ["cards", "librivox"]
    assert len(listing.utterances) == 10
    assert all(u.text and "<s>" not in u.text for u in listing.utterances)


@pytest.mark.parametrize(
    "ci, verdict",
    [
        ((0.0, 0.0), "within"),  # the model against itself
        ((-0.05, 0.01), "within"),  # the upper end exactly at the tolerance
        ((-0.08, -0.02), "within"),  # better: the tolerance is one-sided
        ((-0.01, 0.03), "unclear"),  # straddles +1 point
        ((0.011, 0.04), "beyond"),
    ],
)
def test_tolerance_is_judged_on_the_interval(ci, verdict):
    assert nt.tolerance_verdict(*ci, tolerance=0.01) == verdict


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("exp/train", "NAME=PATH"),
        ("=exp/train", "NAME=PATH"),
        ("zero-shot=x", "base checkpoint"),
        ("a/b=x", "names files"),
    ],
)
def test_model_specs(spec, problem):
    assert nt.parse_model_spec("fsdd = exp/fsdd/train") == ("fsdd", "exp/fsdd/train")
    with pytest.raises(ValueError, match=problem):
        nt.parse_model_spec(spec)
