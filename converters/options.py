"""Conversion options."""

from __future__ import annotations

from dataclasses import dataclass, field

QUANTS: tuple[str, ...] = ("int4", "int8", "fp32")
GRAPHS: tuple[str, ...] = ("auto", "optimum", "gqa")


@dataclass(frozen=True)
class ConvertOptions:
    """What to build. ``keep_fp32`` holds substrings of node or weight names left unquantized.

    ``symmetric`` picks ONNX Runtime's symmetric int4 grid for the MatMuls instead of the
    default affine blocks with float zero points (see converters/int4_affine.py).
    """

    quant: str = "int4"  # one of QUANTS
    block_size: int = 32
    accuracy_level: int = 4
    keep_fp32: tuple[str, ...] = field(default_factory=tuple)
    max_context: int | None = None
    trust_remote_code: bool = False
    graph: str = "auto"  # one of GRAPHS
    symmetric: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        from converters.errors import ConverterError

        if self.quant not in QUANTS:
            raise ConverterError(f"quant must be one of {', '.join(QUANTS)}, not {self.quant!r}")
        if self.graph not in GRAPHS:
            raise ConverterError(f"graph must be one of {', '.join(GRAPHS)}, not {self.graph!r}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConverterError(f"block size must be a power of two >= 16, not {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConverterError(f"accuracy level must be 0..4, not {self.accuracy_level}")
        if self.max_context is not None and self.max_context < 16:
            raise ConverterError(f"max context must be at least 16, not {self.max_context}")
