"""Converter errors, each mapped onto the project's exception tree (and so its error codes)."""

from __future__ import annotations

from edge_runtime.errors import BadRequest, EdgeRuntimeError, InternalError

INSTALL_HINT = "pip install 'edge-runtime[convert]'"


class ConverterError(EdgeRuntimeError):
    """Base of every error the converter raises on purpose."""

    code = "internal"


class SourceError(ConverterError, BadRequest):
    """The model source is missing, not a model, or unreadable."""

    code = "bad_request"


class CorruptSource(SourceError):
    """A GGUF or weight file is corrupt or truncated."""


class UnsupportedArchitecture(SourceError):
    """The model's architecture cannot be exported."""


class UnsupportedTokenizer(SourceError):
    """The source's tokenizer is of a kind the converter cannot rebuild."""


class HubUnavailable(SourceError):
    """A hub id was given but the Hugging Face hub cannot be reached."""


class OutputError(ConverterError):
    """The output folder cannot be written (exists, unwritable, disk full)."""


class DiskFull(OutputError):
    """The disk filled up while the bundle was written."""


class MissingExtra(ConverterError):
    """The ``convert`` extra (torch, transformers, optimum, onnx, gguf) is not installed."""

    def __init__(self, module: str) -> None:
        super().__init__(f"the converter needs {module!r}; install it with: {INSTALL_HINT}")
        self.module = module


class ExportError(ConverterError, InternalError):
    """Export or quantization of the graph failed."""
