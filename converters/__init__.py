"""The offline converter: turn a small open-weight model into an edge-runtime bundle.

Importing this package is cheap; torch, transformers and optimum load only when a
conversion runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from converters.options import ConvertOptions

if TYPE_CHECKING:
    from converters.pipeline import convert


def __getattr__(name: str) -> Any:
    if name == "convert":
        from converters.pipeline import convert

        return convert
    raise AttributeError(name)


__all__ = ["ConvertOptions", "__version__", "convert"]
