"""Conversion options."""

from __future__ import annotations

from dataclasses import dataclass, field

QUANTS: tuple[str, ...] = ("int4", "int8", "fp32")
GRAPHS: tuple[str, ...] = ("auto", "optimum", "gqa")
INT4_SCHEMES: tuple[str, ...] = ("symmetric", "asymmetric", "affine")


@dataclass(frozen=True)
class ConvertOptions:
    """What to build. ``keep_fp32`` holds substrings of node or weight names left unquantized.

    ``int4_scheme`` is how int4 blocks are stored: "symmetric" (no zero point, the fastest
    kernels), "asymmetric" (a 4-bit zero point per block) or "affine" (a float zero point
    per block, which reproduces a GGUF's affine blocks exactly but runs on ONNX Runtime's
    slow generic path: about 25x slower decoding on SmolLM2 here). ``calibrate`` rounds the
    symmetric int4 weights against the activations of a calibration text, compensating each
    channel's error in the others (GPTQ); ``None`` means on for symmetric int4, off otherwise.
    ``head_bits = 8`` stores the lm_head in 8-bit blocks. Both raise the int4 bundle's
    agreement with fp32; calibration costs conversion time, the 8-bit head decode speed and
    memory.
    """

    quant: str = "int4"  # one of QUANTS
    block_size: int = 32
    accuracy_level: int = 4
    keep_fp32: tuple[str, ...] = field(default_factory=tuple)
    max_context: int | None = None
    trust_remote_code: bool = False
    graph: str = "auto"  # one of GRAPHS
    int4_scheme: str = "symmetric"  # one of INT4_SCHEMES
    head_bits: int = 4  # 8 keeps the lm_head (the logits) at 8-bit blocks in an int4 bundle
    calibrate: bool | None = None  # see ``calibrated``
    overwrite: bool = False

    def __post_init__(self) -> None:
        from converters.errors import ConverterError

        if self.quant not in QUANTS:
            raise ConverterError(f"quant must be one of {', '.join(QUANTS)}, not {self.quant!r}")
        if self.graph not in GRAPHS:
            raise ConverterError(f"graph must be one of {', '.join(GRAPHS)}, not {self.graph!r}")
        if self.int4_scheme not in INT4_SCHEMES:
            raise ConverterError(
                f"int4 scheme must be one of {', '.join(INT4_SCHEMES)}, not {self.int4_scheme!r}"
            )
        if self.head_bits not in (4, 8):
            raise ConverterError(f"head bits must be 4 or 8, not {self.head_bits}")
        if self.quant != "int4" and (self.calibrate or self.head_bits != 4):
            raise ConverterError("--calibrate and --head-bits apply to int4 bundles only")
        if self.calibrate and self.int4_scheme != "symmetric":
            raise ConverterError("calibrated scales are for the symmetric int4 scheme only")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConverterError(f"block size must be a power of two >= 16, not {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConverterError(f"accuracy level must be 0..4, not {self.accuracy_level}")
        if self.max_context is not None and self.max_context < 16:
            raise ConverterError(f"max context must be at least 16, not {self.max_context}")

    @property
    def calibrated(self) -> bool:
        """Whether int4 weights are rounded against calibration activations."""
        if self.calibrate is None:
            return self.quant == "int4" and self.int4_scheme == "symmetric"
        return self.calibrate
