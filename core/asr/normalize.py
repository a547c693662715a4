"""Text normalization before scoring: Whisper's English normalizer for English, a basic one otherwise.

Scoring raw strings would count casing, punctuation and spelling variants ("colour"/"color",
"ten"/"10") as errors; Whisper's published WERs use these normalizers, so figures stay comparable.

Diacritics: the English normalizer always folds them ("café" = "cafe"). The basic one keeps them
by default, because in most other languages they are spelling: Spanish "año" (year) and "ano"
(anus) are different words, and a model that drops the tilde made an error. ``fold_diacritics``
folds them anyway (NFKD, marks removed: "contraseña" = "contrasena"), for references typed without
accents: the Asterisk Spanish transcripts write "contrasena", "numero", "menu" in most prompts
and "menú", "está" in a few, while the speaker says them correctly.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer


def is_english(language: str) -> bool:
    return language.lower() in ("en", "english")


def normalizer_name(language: str, fold_diacritics: bool = False) -> str:
    """What a results file records as its normalizer."""
    if is_english(language):
        return "whisper-english"
    return "basic, diacritics folded" if fold_diacritics else "basic"


@cache
def get_normalizer(language: str = "en", fold_diacritics: bool = False) -> Callable[[str], str]:
    if is_english(language):
        # The British->American spelling map lives in the tokenizer's normalizer.json, which
        # offline checkpoints may not ship; EnglishTextNormalizer crashes on None, so pass {}.
        norm = EnglishTextNormalizer({})
    else:
        norm = BasicTextNormalizer(remove_diacritics=fold_diacritics)
    # Both can leave stray spaces where punctuation was; word splitting ignores them, CER does not.
    # EnglishTextNormalizer also keeps the last dot of a trailing ellipsis ("exactly..." ->
    # "exactly ."), which would count as a word: tokens made only of dots are dropped.
    return lambda text: " ".join(w for w in norm(text).split() if w.strip("."))
