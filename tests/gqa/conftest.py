"""Fixtures: tiny random HF models exported as gqa graphs, and their PyTorch references."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

MAX_LENGTH = 128


@dataclass
class Exported:
    """A gqa graph next to the HF model it came from."""

    hf_dir: Path
    onnx_path: Path
    torch_model: Any
    arch: Any  # edge_runtime.bundle.manifest.Architecture
    spec: Any  # edge_runtime.bundle.manifest.GraphSpec

    def session(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        return ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])

    def slots(self, count: int = 1, max_length: int = MAX_LENGTH) -> Any:
        """Return ``count`` KV slots on a new session of this graph."""
        from edge_runtime.engine.runners.gqa import GqaSlots

        bundle = SimpleNamespace(graph=self.spec, architecture=self.arch)
        return GqaSlots(self.session(), bundle, slots=count, max_length=max_length)  # type: ignore[arg-type]

    def runner(self, max_length: int = MAX_LENGTH) -> Any:
        """Return one sequence driven directly on a new session of this graph."""
        from edge_runtime.engine.runners.single import SingleSequence

        return SingleSequence(self.slots(1, max_length))


def _architecture(config: Any) -> Any:
    from edge_runtime.bundle.manifest import Architecture

    return Architecture(
        model_type=config.model_type,
        num_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        head_dim=config.hidden_size // config.num_attention_heads,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        context_length=MAX_LENGTH,
        eos_token_ids=[config.eos_token_id],
    )


@pytest.fixture(scope="session")
def gqa_export(
    tiny_hf_model: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Exported]:
    """Return a factory: ``gqa_export("llama")`` -> the tiny model exported (built once)."""
    built: dict[str, Exported] = {}

    def make(arch: str) -> Exported:
        if arch not in built:
            import torch
            from transformers import AutoModelForCausalLM

            from converters.gqa import export

            hf_dir = tiny_hf_model(arch)
            out = tmp_path_factory.mktemp(f"gqa-{arch}")
            spec = export(hf_dir, out, max_length=MAX_LENGTH)
            model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
            built[arch] = Exported(
                hf_dir, out / "model.onnx", model, _architecture(model.config), spec
            )
        return built[arch]

    return make
