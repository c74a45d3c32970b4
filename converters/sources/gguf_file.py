"""A GGUF file: dequantized to a normal Hugging Face folder through transformers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from converters.errors import UnsupportedArchitecture
from converters.sources import PreparedSource
from converters.sources.gguf_config import config_fixes
from converters.sources.gguf_meta import TOKEN_CONTROL, GGUFMeta, read_gguf
from converters.sources.gguf_speed import fast_gguf_loading
from converters.sources.gguf_tokenizer import check_tokenizer_model, write_tokenizer
from edge_runtime.bundle import Source, sha256_file

# Tokens that end an assistant turn in common chat templates.
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def _gguf_architectures() -> set[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"}


def turn_end_ids(meta: GGUFMeta, template: str | None) -> list[int]:
    """Return every id that ends a turn: the GGUF's eos/eot/eom and the template's end marker."""
    ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is not None:
            ids.append(int(value))
    tokens = [str(t) for t in meta.get("tokenizer.ggml.tokens", [])]
    types = list(meta.get("tokenizer.ggml.token_type", []))
    if "<|endoftext|>" in tokens:  # ends a document, so it ends any turn as well
        index = tokens.index("<|endoftext|>")
        if index < len(types) and types[index] == TOKEN_CONTROL:
            ids.append(index)
    for marker in TURN_END_TOKENS:
        if template and marker in template and marker in tokens:
            ids.append(tokens.index(marker))
    return sorted(set(ids))


def _default_add_bos(meta: GGUFMeta) -> bool:
    value = meta.get("tokenizer.ggml.add_bos_token")
    if value is None:  # llama.cpp's default: SentencePiece vocabularies add BOS, BPE does not
        return meta.get("tokenizer.ggml.model") == "llama"
    return bool(value)


class GGUFSource:
    """Dequantize a GGUF file and rebuild its tokenizer from its own metadata."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()

    def _link_dir(self, work_dir: Path) -> Path:
        link_dir = work_dir / "gguf"
        link_dir.mkdir(parents=True, exist_ok=True)
        link = link_dir / "model.gguf"
        if not link.exists():
            link.symlink_to(self.path)
        return link_dir

    def _save_model(
        self, link_dir: Path, hf_dir: Path, eos_ids: list[int], fixes: dict[str, Any]
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        with fast_gguf_loading():
            config = AutoConfig.from_pretrained(str(link_dir), gguf_file="model.gguf")
            config = config.__class__.from_dict({**config.to_dict(), **fixes})
            model = AutoModelForCausalLM.from_pretrained(
                str(link_dir), gguf_file="model.gguf", config=config, dtype=torch.float32
            )
        if model.generation_config is not None:
            model.generation_config.eos_token_id = eos_ids
        model.save_pretrained(str(hf_dir), safe_serialization=True)

    def _write_tokenizer_config(
        self, meta: GGUFMeta, hf_dir: Path, add_bos: bool, eos_ids: list[int], template: str | None
    ) -> None:
        tokens = [str(t) for t in meta.get("tokenizer.ggml.tokens", [])]
        bos_id = meta.get("tokenizer.ggml.bos_token_id")
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": tokens[int(bos_id)] if bos_id is not None else None,
            "eos_token": tokens[eos_ids[0]] if eos_ids else None,
            "add_bos_token": add_bos,
            "chat_template": template,
        }
        (hf_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))

    def prepare(self, work_dir: Path, *, trust_remote_code: bool = False) -> PreparedSource:
        meta = read_gguf(self.path)
        supported = _gguf_architectures()
        if meta.architecture not in supported:
            raise UnsupportedArchitecture(
                f"{self.path}: GGUF architecture {meta.architecture!r} cannot be loaded; "
                f"supported: {', '.join(sorted(supported))}"
            )
        check_tokenizer_model(meta)  # before the slow dequantization
        fixes = config_fixes(meta)  # before the slow dequantization: it may refuse the file
        template = meta.get("tokenizer.chat_template")
        add_bos = _default_add_bos(meta)
        eos_ids = turn_end_ids(meta, template)
        link_dir = self._link_dir(work_dir)
        hf_dir = work_dir / "hf"
        self._save_model(link_dir, hf_dir, eos_ids, fixes)
        write_tokenizer(meta, hf_dir, add_bos)
        self._write_tokenizer_config(meta, hf_dir, add_bos, eos_ids, template)
        name = str(meta.get("general.name") or re.sub(r"\.gguf$", "", self.path.name))
        facts = Source(
            kind="gguf",
            id=self.path.name if not name else f"{name} ({self.path.name})",
            license=meta.get("general.license"),
            sha256=sha256_file(self.path),
        )
        return PreparedSource(
            hf_dir=hf_dir,
            facts=facts,
            eos_token_ids=eos_ids,
            add_bos_token=add_bos,
            chat_template=template,
        )
