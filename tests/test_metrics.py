"""WER/CER modules, edit counts, bootstrap intervals and normalizers (recipe.metrics), and the
evaluate stage's scoring, on hand-computed examples."""

import os

import numpy as np
import pytest

from core.asr.errors import error_counts
from core.asr.normalize import get_normalizer
from core.checkpoint import model_fingerprint
from recipe.evaluate import compare, score
from recipe.metrics import load_metric
from recipe.metrics.errors import bootstrap_ci, format_p, paired_bootstrap


def test_wer_hand_computed():
    # "the cat sat on the mat" (6 words) -> "the cat sit on mat mat now":
    # sat->sit, the->mat (2 substitutions) and "now" inserted: 3 edits, the minimum.
    wer = load_metric("wer").compute(
        predictions=["the cat sit on mat mat now"], references=["the cat sat on the mat"]
    )
    assert wer["wer"] == pytest.approx(3 / 6)


def test_wer_counts_and_corpus_level():
    # Corpus WER sums errors over utterances, it does not average per-utterance rates.
    refs = ["a b c d", "e f"]
    hyps = ["a x c d", ""]
    out = load_metric("wer").compute(predictions=hyps, references=refs, return_counts=True)
    assert (out["substitutions"], out["deletions"], out["insertions"], out["hits"]) == (1, 2, 0, 3)
    assert out["wer"] == pytest.approx(3 / 6)  # the mean of per-utterance rates would be (0.25 + 1) / 2


def test_insertions_can_exceed_one_and_empty_reference():
    assert load_metric("wer").compute(predictions=["a b c"], references=["a"])["wer"] == pytest.approx(2.0)
    c = error_counts(["", "a b"], ["x y", "a b"])
    assert list(c.insertions) == [2, 0] and c.rate() == pytest.approx(2 / 2)


def test_cer_hand_computed():
    # "kitten" -> "sitting": k->s, e->i, +g = 3 edits over 6 characters.
    assert load_metric("cer").compute(predictions=["sitting"], references=["kitten"])["cer"] == pytest.approx(
        3 / 6
    )
    # spaces are characters: "ab cd" vs "abcd" is one deletion over 5.
    assert load_metric("cer").compute(predictions=["abcd"], references=["ab cd"])["cer"] == pytest.approx(
        1 / 5
    )


def test_english_normalizer():
    n = get_normalizer("en")
    assert n("Hello, Mr. Smith!") == n("hello mister smith")
    assert n("colour") in ("colour", "color")  # no spelling map offline: must not crash
    assert get_normalizer("de")("Grüße, Welt!") == "grüße welt"
    # a trailing ellipsis is punctuation, not a word (the bare normalizer keeps one dot of it)
    assert n("The time will be exactly...") == "the time will be exactly"
    assert n("... extension ...") == "extension"
    assert n("To exit the menu…") == "to exit the menu"


def test_bootstrap_ci_contains_estimate_and_narrows():
    rng = np.random.default_rng(0)

    def sample(n):
        ref = rng.integers(3, 12, size=n)
        err = rng.binomial(ref, 0.2)
        return err, ref

    widths = []
    for n in (50, 2000):
        err, ref = sample(n)
        lo, hi = bootstrap_ci(err, ref, n_boot=2000, seed=1)
        point = err.sum() / ref.sum()
        assert lo <= point <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # ~1/sqrt(n): 40x data -> ~6x narrower


def test_paired_bootstrap_detects_a_real_improvement_and_not_a_fake_one():
    rng = np.random.default_rng(0)
    ref = rng.integers(5, 10, size=300)
    a = rng.binomial(ref, 0.3)
    better = np.maximum(a - rng.binomial(1, 0.6, size=300), 0)
    p = paired_bootstrap(a, better, ref, n_boot=2000, seed=0)
    assert p["delta"] < 0 and p["ci_high"] < 0 and p["p_improvement"] > 0.99 and p["p_value"] < 0.01
    same = paired_bootstrap(a, a, ref, n_boot=500, seed=0)
    assert same["delta"] == 0 and same["p_value"] == 1.0


def _records(hyps, refs, speakers):
    return [
        {"id": str(i), "ref_norm": r, "hyp_norm": h, "speaker": s, "accent": ""}
        for i, (h, r, s) in enumerate(zip(hyps, refs, speakers, strict=True))
    ]


def test_score_per_speaker_and_compare():
    recs = _records(["a b", "c x", "e f g"], ["a b", "c d", "e f"], ["s1", "s1", "s2"])
    res = score(recs, n_boot=200)
    assert res["overall"]["wer"] == pytest.approx(2 / 6)
    assert res["per_speaker"]["s1"]["wer"] == pytest.approx(1 / 4)
    assert res["per_speaker"]["s2"]["wer"] == pytest.approx(1 / 2)
    assert "per_accent" not in res  # no accent labels: no empty breakdown
    fixed = _records(["a b", "c d", "e f"], ["a b", "c d", "e f"], ["s1", "s1", "s2"])
    p = compare(recs, fixed, n_boot=200)
    assert p["rate_a"] == pytest.approx(2 / 6) and p["rate_b"] == 0 and p["delta"] < 0
    with pytest.raises(ValueError, match="same utterances"):
        compare(recs[:2], fixed, n_boot=10)


def test_model_fingerprint_ignores_the_card_but_not_the_weights(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"w" * 10)
    (tmp_path / "config.json").write_text("{}")
    before = model_fingerprint(str(tmp_path))
    (tmp_path / "README.md").write_text("card written after the final evaluation")
    assert model_fingerprint(str(tmp_path)) == before
    (tmp_path / "model.safetensors").write_bytes(b"w" * 11)
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))
    assert model_fingerprint(str(tmp_path)) != before
    assert model_fingerprint("openai/whisper-tiny") == "openai/whisper-tiny"


def test_a_bootstrap_p_below_its_resolution_is_a_bound():
    assert format_p(0.0, 2000) == "< 0.001" and format_p(0.049, 2000) == "0.049"
