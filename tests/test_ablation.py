"""The ablation's statistics, from hand-made decoding records (no training)."""

import numpy as np
import pytest

from recipe.ablation import REFERENCE_ARM, plot, summarize, to_markdown


def records(n, error_rate, seed):
    """n utterances of 5 reference words; each word is wrong with probability error_rate."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ref = ["w"] * 5
        hyp = ["x" if rng.random() < error_rate else "w" for _ in ref]
        out.append({"id": f"u{i}", "ref_norm": " ".join(ref), "hyp_norm": " ".join(hyp)})
    return out


def test_summary_means_cis_and_paired_pvalues(tmp_path):
    results = {
        "zero_shot": [records(200, 0.40, 0)],
        "real_only": [records(200, 0.30, s) for s in (1, 2, 3)],
        "real+random": [records(200, 0.29, s) for s in (4, 5, 6)],
        REFERENCE_ARM: [records(200, 0.15, s) for s in (7, 8, 9)],
    }
    s = summarize(results, n_boot=1000, seed=0)
    arms = s["arms"]
    assert arms["zero_shot"]["n_seeds"] == 1 and arms["real_only"]["n_seeds"] == 3
    assert arms["zero_shot"]["wer_mean"] == pytest.approx(0.40, abs=0.04)
    for a in arms.values():
        assert a["wer_ci"][0] <= a["wer_mean"] <= a["wer_ci"][1]
        assert a["wer_mean"] == pytest.approx(np.mean(a["wer_per_seed"]))
    comps = s[f"{REFERENCE_ARM}_vs"]
    assert set(comps) == {"zero_shot", "real_only", "real+random"}
    for c in comps.values():  # the reference arm is clearly better than every other
        assert c["delta"] < -0.1 and c["ci_high"] < 0 and c["p_value"] < 0.01
    md = to_markdown(s)
    assert REFERENCE_ARM in md and "real+random" in md
    plot(s, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_equal_arms_are_not_significant():
    results = {
        "real_only": [records(300, 0.2, s) for s in (1, 2)],
        REFERENCE_ARM: [records(300, 0.2, s) for s in (3, 4)],
    }
    c = summarize(results, n_boot=1000, seed=0)[f"{REFERENCE_ARM}_vs"]["real_only"]
    assert c["p_value"] > 0.05 and c["ci_low"] < 0 < c["ci_high"]


def test_runs_must_decode_the_same_utterances():
    results = {"real_only": [records(10, 0.2, 1)], REFERENCE_ARM: [records(9, 0.2, 2)]}
    with pytest.raises(ValueError, match="other utterances"):
        summarize(results, n_boot=10, seed=0)
