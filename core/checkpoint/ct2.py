"""Read a CTranslate2 ``model.bin`` without the ctranslate2 runtime.

The runtime does not expose a model's weights, and the binary format is simple (see
``ctranslate2/specs/model_spec.py``, ``ModelSpec._serialize``): a version, the spec name and
revision, the variables (name, shape, dtype id, raw bytes) and the aliases (name -> target).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.checkpoint.errors import CheckpointError

# CTranslate2's binary format (model_spec.py): dtype ids in the order of its DataType enum.
CT2_BINARY_VERSIONS = (5, 6)
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


@dataclass
class Ct2Model:
    """The contents of a CTranslate2 ``model.bin``: arrays by name, and aliases (name -> target)."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray | None:
        return self.variables.get(self.aliases.get(name, name))


def read_ctranslate2_model(path: str | os.PathLike) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (binary versions 5-6) without the ctranslate2 runtime."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise CheckpointError(
                f"{path}: truncated at byte {pos} of {len(data)}; the file is corrupt, copy it again"
            )
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += size
        return value

    def string() -> str:
        nonlocal pos
        length = take("<H")  # includes the trailing NUL
        raw = bytes(data[pos : pos + length])
        pos += length
        if len(raw) != length or not raw.endswith(b"\0"):
            raise CheckpointError(
                f"{path}: malformed string at byte {pos}; the file is corrupt, copy it again"
            )
        return raw[:-1].decode("utf-8")

    version = take("<I")
    if version not in CT2_BINARY_VERSIONS:
        raise CheckpointError(
            f"{path}: CTranslate2 binary version {version}, this reader knows {CT2_BINARY_VERSIONS}; "
            "is this a CTranslate2 model.bin?"
        )
    spec = string()
    revision = take("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("<I")):
        name = string()
        shape = tuple(take("<I") for _ in range(take("<B")))
        type_id = take("<B")
        num_bytes = take("<I")
        if type_id not in _CT2_DTYPES:
            raise CheckpointError(f"{path}: variable {name} has unknown dtype id {type_id}")
        raw = data[pos : pos + num_bytes]
        if len(raw) != num_bytes:
            raise CheckpointError(f"{path}: variable {name} is truncated; the file is corrupt, copy it again")
        pos += num_bytes
        dtype = _CT2_DTYPES[type_id]
        if dtype == "bfloat16":  # numpy has no bfloat16: it is the top half of a float32
            array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        if array.size != int(np.prod(shape)):
            raise CheckpointError(f"{path}: variable {name} holds {array.size} values for shape {shape}")
        variables[name] = array.reshape(shape)
    aliases = {}
    for _ in range(take("<I")):
        alias = string()
        aliases[alias] = string()
    if pos != len(data):
        raise CheckpointError(
            f"{path}: {len(data) - pos} trailing bytes after the last alias; the file is corrupt"
        )
    return Ct2Model(spec, revision, variables, aliases)
