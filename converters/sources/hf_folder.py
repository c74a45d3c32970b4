"""A Hugging Face model folder on disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

from converters.errors import SourceError
from converters.sources import PreparedSource
from edge_runtime.bundle import Source

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def read_license(folder: Path) -> str | None:
    """Return the ``license:`` from a model card's front matter, if any."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    match = re.search(r"^license:\s*(\S+)", card.read_text(errors="replace"), re.MULTILINE)
    return match.group(1).strip("'\"") if match else None


def check_model_folder(folder: Path) -> dict[str, object]:
    """Return the folder's config.json, or raise if it is not a model folder."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{folder}: not a model folder (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise SourceError(f"{config_path}: no model_type; not a transformers model config")
    if not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        raise SourceError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")
    return config


class HFFolderSource:
    """Use a local folder as it is."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()

    def prepare(self, work_dir: Path, *, trust_remote_code: bool = False) -> PreparedSource:
        check_model_folder(self.folder)
        facts = Source(kind="hf_folder", id=self.folder.name, license=read_license(self.folder))
        return PreparedSource(hf_dir=self.folder, facts=facts)
