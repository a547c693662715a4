"""Text normalization before scoring: Whisper's English normalizer for English, a basic one otherwise.

Scoring raw strings would count casing, punctuation and spelling variants ("colour"/"color",
"ten"/"10") as errors; Whisper's published WERs use these normalizers, so figures stay comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer


@cache
def get_normalizer(language: str = "en") -> Callable[[str], str]:
    if language.lower() in ("en", "english"):
        # The British->American spelling map lives in the tokenizer's normalizer.json, which
        # offline checkpoints may not ship; EnglishTextNormalizer crashes on None, so pass {}.
        norm = EnglishTextNormalizer({})
    else:
        norm = BasicTextNormalizer()
    # Both can leave stray spaces where punctuation was; word splitting ignores them, CER does not.
    # EnglishTextNormalizer also keeps the last dot of a trailing ellipsis ("exactly..." ->
    # "exactly ."), which would count as a word: tokens made only of dots are dropped.
    return lambda text: " ".join(w for w in norm(text).split() if w.strip("."))
