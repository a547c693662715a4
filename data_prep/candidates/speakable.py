"""Cheap checks around synthesis, before the intelligibility gate pays for a decoding.

Before: a text a voice cannot say is never sent to it. espeak-ng reads Arabic or Hebrew as a
string of letter names ("alef, bet, ...": 12.5 s for one line) and some engines speak an emoji's
name while others drop it, and the label keeps the original text either way. So a text with
pictographic symbols is refused for every voice, and a text with letters outside the scripts
of the voice's language (or outside its alphabet, for the languages listed in LATIN_EXTRAS: an
English voice never gets "contraseña") is refused for that voice.

After: audio whose length or level does not fit its text is dropped: far too long for its
characters (letter names, a looping engine), far too short (a word or two of a sentence), or so
quiet it is not speech a model should learn from (flite's `slt` once gave 0.19 s at -52 dBFS).
"""

from __future__ import annotations

import unicodedata

import numpy as np

# Writing systems by language code (the first part of a voice's accent label, `en-gb` -> `en`).
# A language missing here is not checked: better no check than refusing a user's own voices.
_SCRIPTS = {
    "LATIN": "af an ca cs cy da de en eo es et eu fi fr ga gd hr hu id is it lt lv ms mt nl no nb pl pt "
    "ro sk sl sq sv sw tr vi",
    "CYRILLIC": "be bg kk ky mk ru sr tt uk",
    "GREEK": "el grc",
    "ARABIC": "ar fa ps sd ur",
    "HEBREW": "he",
    "DEVANAGARI": "hi mr ne sa",
    "BENGALI": "bn as",
    "TAMIL": "ta",
    "THAI": "th",
    "GEORGIAN": "ka",
    "ARMENIAN": "hy",
    "HANGUL": "ko",
    "CJK": "zh cmn yue ja",
    "HIRAGANA": "ja",
    "KATAKANA": "ja",
}
# Letters beyond a-z that a Latin-script language writes, for the languages whose voices are
# planned here. The script alone lets an English voice take "contraseña" and read it with English
# rules (or spell the ñ); a letter outside the language's alphabet marks another language's text.
# A Latin-script language missing here gets the script check only.
LATIN_EXTRAS = {
    "en": "",
    "es": "áéíóúüñ",
}
SCRIPTS_OF_LANGUAGE: dict[str, frozenset[str]] = {}
for _script, _codes in _SCRIPTS.items():
    for _code in _codes.split():
        SCRIPTS_OF_LANGUAGE[_code] = SCRIPTS_OF_LANGUAGE.get(_code, frozenset()) | {_script}

# Unicode categories nobody reads aloud the same way: other symbols (emoji, dingbats), private
# use, surrogates, unassigned. Currency and math signs (Sc, Sm) are spoken ("$5", "2 + 2").
_UNSPEAKABLE_CATEGORIES = {"So", "Co", "Cs", "Cn"}

# -40 dBFS: well under any engine's normal output, well over its noise floor.
QUIET_PEAK = 0.01
# Seconds of audio per letter or digit of the text, around a fixed allowance for pauses and
# short texts: conversational English is about 0.07 s a character; a digit read as a number word
# ("5" -> "five") and slow voices stay well inside these bounds.
MAX_SECONDS_PER_CHAR = 0.35
SECONDS_ALLOWANCE = 1.0
MIN_SECONDS_PER_CHAR = 0.02


def language_of(accent: str) -> str:
    """`en` from `en-gb-scotland`, `en_US`, ...; empty when the voice says nothing."""
    return accent.replace("_", "-").split("-", 1)[0].lower()


def other_language(accent: str, language: str) -> bool:
    """Whether a voice with this accent label speaks a known language other than ``language``."""
    own = language_of(accent)
    return own in SCRIPTS_OF_LANGUAGE and own != language_of(language)


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return "CJK" if name.startswith("CJK") else name.split(" ", 1)[0]


def unspeakable_symbols(text: str) -> str:
    """The characters of ``text`` no voice should be asked to read (emoji, private use, ...)."""
    return "".join(ch for ch in text if unicodedata.category(ch) in _UNSPEAKABLE_CATEGORIES)


def foreign_letters(text: str, language: str) -> str:
    """Letters of ``text`` outside the scripts ``language`` is written in, or outside its alphabet
    when LATIN_EXTRAS knows it (empty when the language is unknown here, or every letter fits)."""
    scripts = SCRIPTS_OF_LANGUAGE.get(language)
    if not scripts:
        return ""
    extras = LATIN_EXTRAS.get(language)

    def foreign(ch: str) -> bool:
        if _script(ch) not in scripts:
            return True
        return extras is not None and _script(ch) == "LATIN" and not ch.isascii() and ch.lower() not in extras

    return "".join(ch for ch in text if ch.isalpha() and foreign(ch))


def audio_problem(samples: np.ndarray, rate: int, text: str) -> tuple[str, str] | None:
    """``(reason, detail)`` when the audio cannot be ``text`` spoken, else None."""
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak < QUIET_PEAK:
        return (
            "too_quiet",
            f"peak {20 * np.log10(max(peak, 1e-9)):.0f} dBFS < {20 * np.log10(QUIET_PEAK):.0f} dBFS",
        )
    chars = sum(ch.isalnum() for ch in text)
    seconds = samples.size / rate
    longest = SECONDS_ALLOWANCE + MAX_SECONDS_PER_CHAR * chars
    if seconds > longest:
        return "too_long_for_text", f"{seconds:.1f} s for {chars} characters (at most {longest:.1f} s)"
    if seconds < MIN_SECONDS_PER_CHAR * chars:
        return "too_short_for_text", f"{seconds:.2f} s for {chars} characters"
    return None
