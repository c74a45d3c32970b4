"""Architecture facts, generation defaults and the chat template, read from an HF folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from converters.sources import PreparedSource
from edge_runtime.bundle import Architecture

GENERATION_DEFAULTS: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 40,
    "repetition_penalty": 1.0,
    "max_tokens": 256,
}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value)]


def _token_id(tokenizer_json: Path, token: Any) -> int | None:
    if isinstance(token, dict):
        token = token.get("content")
    if not token:
        return None
    from tokenizers import Tokenizer

    found = Tokenizer.from_file(str(tokenizer_json)).token_to_id(str(token))
    return None if found is None else int(found)


def eos_ids(hf_dir: Path, config: Any, prepared: PreparedSource) -> list[int]:
    """Every id that ends a turn; a source's own metadata (GGUF) wins over converted configs."""
    if prepared.eos_token_ids:
        return sorted(set(prepared.eos_token_ids))
    gen = _read_json(hf_dir / "generation_config.json")
    tok_cfg = _read_json(hf_dir / "tokenizer_config.json")
    ids = set(_ids(getattr(config, "eos_token_id", None))) | set(_ids(gen.get("eos_token_id")))
    tok_eos = _token_id(hf_dir / "tokenizer.json", tok_cfg.get("eos_token"))
    if tok_eos is not None:
        ids.add(tok_eos)
    template = chat_template(hf_dir, prepared) or ""
    if "<|im_end|>" in template:
        im_end = _token_id(hf_dir / "tokenizer.json", "<|im_end|>")
        if im_end is not None:
            ids.add(im_end)
    return sorted(ids)


def architecture(
    hf_dir: Path, config: Any, prepared: PreparedSource, max_context: int | None
) -> Architecture:
    """Collect what the runtime needs to size buffers, add BOS and stop."""
    tok_cfg = _read_json(hf_dir / "tokenizer_config.json")
    heads = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    context = int(getattr(config, "max_position_embeddings", 0) or 2048)
    if max_context:
        context = min(context, max_context)
    context = _rope_context(config, context)
    add_bos = prepared.add_bos_token
    if add_bos is None:
        add_bos = bool(tok_cfg.get("add_bos_token", False))
    bos = getattr(config, "bos_token_id", None)
    pad = getattr(config, "pad_token_id", None)
    return Architecture(
        model_type=str(config.model_type),
        num_layers=int(config.num_hidden_layers),
        num_attention_heads=heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(config, "head_dim", None) or hidden // heads),
        hidden_size=hidden,
        vocab_size=int(config.vocab_size),
        context_length=context,
        eos_token_ids=eos_ids(hf_dir, config, prepared),
        bos_token_id=None if bos is None else int(_ids(bos)[0]),
        pad_token_id=None if pad is None else int(_ids(pad)[0]),
        add_bos_token=add_bos,
    )


def _rope_context(config: Any, context: int) -> int:
    """Cap ``context`` where the exported rotary tables stop being right (LongRoPE)."""
    from converters.gqa.rotary import context_limit

    limit = context_limit(config)
    if limit is None or context <= limit:
        return context
    logging.getLogger(__name__).warning(
        "context capped at %d tokens: past its pretrained context this model re-rotates every "
        "position with LongRoPE's long factors, which the exported graph does not",
        limit,
    )
    return limit


def chat_template(hf_dir: Path, prepared: PreparedSource) -> str | None:
    """The chat template: from the source metadata, tokenizer_config or chat_template.jinja."""
    if prepared.chat_template:
        return prepared.chat_template
    template = _read_json(hf_dir / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template:
        return template
    jinja = hf_dir / "chat_template.jinja"
    return jinja.read_text() if jinja.is_file() else None


def generation_defaults(hf_dir: Path, context_length: int) -> dict[str, Any]:
    """Sampling defaults from generation_config.json, filled in with safe values."""
    gen = _read_json(hf_dir / "generation_config.json")
    out = dict(GENERATION_DEFAULTS)
    for key in ("temperature", "top_p", "top_k", "repetition_penalty"):
        if gen.get(key) is not None:
            out[key] = gen[key]
    if gen.get("do_sample") is False:
        out["temperature"] = 0.0
    out["max_tokens"] = min(int(out["max_tokens"]), context_length)
    return out
