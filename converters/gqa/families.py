"""Which decoder class builds each model type (a HF ``config.model_type``)."""

from __future__ import annotations

from converters.gqa.decoder import LlamaDecoder, MistralDecoder, Qwen2Decoder, Qwen3Decoder
from converters.gqa.gemma import Gemma2Decoder, Gemma3Decoder
from converters.gqa.phi3 import Phi3Decoder

ARCHITECTURES: dict[str, type[LlamaDecoder]] = {
    "llama": LlamaDecoder,
    "qwen2": Qwen2Decoder,
    "qwen3": Qwen3Decoder,
    "mistral": MistralDecoder,
    "gemma2": Gemma2Decoder,
    "gemma3_text": Gemma3Decoder,
    "phi3": Phi3Decoder,
}
