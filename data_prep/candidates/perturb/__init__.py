"""Acoustic perturbations of mono 16 kHz speech: signal functions (``dsp``), noise and RIR banks
(``banks``), op records (``ops``) and seeded recipes that chain them (``recipes``, format there).

    from data_prep.candidates import perturb as P
    y, record = P.perturb(wav, P.load_recipe("default"), seed=7)
    replay = P.apply_ops(wav, record["ops"]) * record["peak_scale"]  # == y, to float rounding
"""

from data_prep.candidates.perturb.dsp import (
    G711_LAWS,
    MAX_RATIO_DENOMINATOR,
    NOISE_COLORS,
    a_law_decoding,
    a_law_encoding,
    add_noise,
    bandlimit,
    codec,
    colored_noise,
    formant,
    gain,
    pitch_shift,
    reverberate,
    speed,
    synthetic_rir,
    telephone,
    tempo,
    time_stretch,
    vtlp_source_hz,
)
from data_prep.candidates.perturb.ops import OPS, Param, apply_op, apply_ops
from data_prep.candidates.perturb.recipes import (
    BUILTIN_RECIPES,
    PEAK_LIMIT,
    OpSpec,
    Recipe,
    load_recipe,
    perturb,
    recipe_from_dict,
    sample_ops,
)

__all__ = [
    "BUILTIN_RECIPES",
    "G711_LAWS",
    "MAX_RATIO_DENOMINATOR",
    "NOISE_COLORS",
    "OPS",
    "PEAK_LIMIT",
    "OpSpec",
    "Param",
    "Recipe",
    "a_law_decoding",
    "a_law_encoding",
    "add_noise",
    "apply_op",
    "apply_ops",
    "bandlimit",
    "codec",
    "colored_noise",
    "formant",
    "gain",
    "load_recipe",
    "perturb",
    "pitch_shift",
    "recipe_from_dict",
    "reverberate",
    "sample_ops",
    "speed",
    "synthetic_rir",
    "telephone",
    "tempo",
    "time_stretch",
    "vtlp_source_hz",
]
