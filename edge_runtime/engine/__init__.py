"""The runtime engine: load a bundle, generate with ONNX Runtime, numpy and tokenizers."""

from edge_runtime.engine.engine import LoadReport, OnnxEngine
from edge_runtime.engine.loader import load_engine
from edge_runtime.engine.options import EngineOptions
from edge_runtime.engine.request import GenerationRequest, Message, Sampling, parse_request
from edge_runtime.engine.types import (
    Engine,
    FinishReason,
    GenerationResult,
    Timings,
    Usage,
)

__all__ = [
    "Engine",
    "EngineOptions",
    "FinishReason",
    "GenerationRequest",
    "GenerationResult",
    "LoadReport",
    "Message",
    "OnnxEngine",
    "Sampling",
    "Timings",
    "Usage",
    "load_engine",
    "parse_request",
]
