"""Model sources: each turns what the user named into a normalized Hugging Face folder.

A source is one small class with ``prepare(work_dir) -> PreparedSource``; :func:`open_source`
picks the class from what the user gave (a ``.gguf`` file, a folder, or a hub id).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from converters.errors import SourceError
from edge_runtime.bundle import Source


@dataclass(frozen=True)
class PreparedSource:
    """A Hugging Face model folder ready to export, plus where it came from.

    ``eos_token_ids`` lists extra ids that end a turn, found in the source's own metadata.
    ``add_bos_token`` is None when the source does not say.
    """

    hf_dir: Path
    facts: Source
    eos_token_ids: list[int] = field(default_factory=list)
    add_bos_token: bool | None = None
    chat_template: str | None = None


class ModelSource(Protocol):
    def prepare(self, work_dir: Path, *, trust_remote_code: bool = False) -> PreparedSource:
        """Write or locate the HF folder (using ``work_dir`` for scratch) and describe it."""
        ...


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def open_source(spec: str | Path) -> ModelSource:
    """Return the source for ``spec``: a ``.gguf`` file, a model folder or a hub id."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SourceError(f"{path}: not a .gguf file or a model folder")
        from converters.sources.gguf_file import GGUFSource

        return GGUFSource(path)
    if path.is_dir():
        from converters.sources.hf_folder import HFFolderSource

        return HFFolderSource(path)
    text = str(spec)
    if _HUB_ID.match(text) and not text.startswith((".", "~")):
        from converters.sources.hub import HubSource

        return HubSource(text)
    raise SourceError(f"{spec}: no such file or folder")
