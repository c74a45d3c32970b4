"""The runtime engine: load a bundle, generate with ONNX Runtime, numpy and tokenizers."""

from edge_runtime.engine.engine import LoadReport, OnnxEngine
from edge_runtime.engine.loader import load_engine
from edge_runtime.engine.options import EngineOptions
from edge_runtime.engine.types import (
    ChatMessage,
    Engine,
    FinishReason,
    GenerationResult,
    Prompt,
    SamplingParams,
    Timings,
    Usage,
)

__all__ = [
    "ChatMessage",
    "Engine",
    "EngineOptions",
    "FinishReason",
    "GenerationResult",
    "LoadReport",
    "OnnxEngine",
    "Prompt",
    "SamplingParams",
    "Timings",
    "Usage",
    "load_engine",
]
