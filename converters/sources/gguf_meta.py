"""Read and sanity-check a GGUF file's header with the ``gguf`` package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.errors import CorruptSource

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = range(
    1, 7
)


@dataclass(frozen=True)
class GGUFMeta:
    """The metadata fields of a GGUF file (key -> value), tensors checked to lie in the file."""

    path: Path
    fields: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.fields.get("general.architecture", "unknown"))


def _field_values(reader: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        values[key] = fld.contents()
    return values


def _check_extents(reader: Any, path: Path) -> None:
    size = path.stat().st_size
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise CorruptSource(
                f"{path}: truncated GGUF (tensor {tensor.name} ends at byte {end}, file has {size})"
            )
    if not reader.tensors:
        raise CorruptSource(f"{path}: GGUF holds no tensors")


def read_gguf(path: Path) -> GGUFMeta:
    """Parse the header and check that every tensor lies inside the file."""
    from gguf import GGUFReader

    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise CorruptSource(f"{path}: not a GGUF file (bad magic)")
    try:
        reader = GGUFReader(str(path))
        fields = _field_values(reader)
    except CorruptSource:
        raise
    except Exception as exc:  # the reader raises many types on damaged headers
        raise CorruptSource(f"{path}: corrupt or truncated GGUF ({exc})") from exc
    _check_extents(reader, path)
    return GGUFMeta(path=path, fields=fields)
