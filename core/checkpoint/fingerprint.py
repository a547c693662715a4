"""What identifies the weights a decoding used, so a cached decoding is reused only for the same ones."""

from __future__ import annotations

from pathlib import Path


def model_fingerprint(model: str) -> str:
    """Identifies the weights a decode used: a local folder by its weight and config files' sizes and
    mtimes (not the card or reports written after a decode), else the name."""
    path = Path(model)
    if not path.is_dir():
        return model
    decoding = {
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "vocab.json",
    }
    weights = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name in decoding)
    )
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights)
