"""The leakage guard: texts of every test split, which no stage may synthesize.

If a TTS engine speaks a target_test sentence, the fine-tuned model has heard that exact word
sequence and its test WER is optimistic. Prepare records the normalized test texts in
`<output_dir>/data/protected_texts.json`; generation asks the guard before every synthesis.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

FILENAME = "protected_texts.json"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def normalize_text(text: str) -> str:
    """Lowercase, no punctuation, single spaces: "Turn LEFT!" and "turn left" are the same sentence."""
    text = unicodedata.normalize("NFKC", text).lower()
    # Typographic apostrophes (NFKC keeps them): "don’t" must match "don't".
    text = text.translate(_APOSTROPHES)
    text = re.sub(r"[^\w\s']|_", " ", text).replace("'", "")
    return " ".join(text.split())


class LeakageGuard:
    def __init__(self, texts: Iterable[str] = (), splits: Iterable[str] = ("target_test",)):
        self.texts = {normalize_text(t) for t in texts} - {""}
        self.splits = list(splits)

    def __len__(self) -> int:
        return len(self.texts)

    def is_protected(self, text: str) -> bool:
        return normalize_text(text) in self.texts

    def filter(self, texts: Iterable[str]) -> tuple[list[str], list[str]]:
        """(allowed, refused), order kept."""
        allowed, refused = [], []
        for t in texts:
            (refused if self.is_protected(t) else allowed).append(t)
        return allowed, refused

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(
            json.dumps({"splits": self.splits, "texts": sorted(self.texts)}, indent=1) + "\n"
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> LeakageGuard:
        doc = json.loads(Path(path).read_text())
        return cls(doc["texts"], doc.get("splits", ()))

    @classmethod
    def from_dataset_dir(cls, data_dir: str | os.PathLike) -> LeakageGuard:
        path = Path(data_dir) / FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: the prepare stage writes it; without it test texts could leak into synthesis. "
                "Run `python -m data_prep.prepare` first."
            )
        return cls.load(path)
