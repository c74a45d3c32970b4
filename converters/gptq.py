"""Symmetric int4 blocks with the rounding error of each input channel compensated (GPTQ).

Rounding a weight row channel by channel, the error of channel ``k`` is folded into the
channels not yet rounded, in the proportion that best cancels it in the layer's output on
the calibration activations (the inverse of their Gram matrix says how). The grid is the
fast kernels' own (``w = d * (q - 8)``, a scale per block of ``block_size`` channels); each
block's scale is chosen, when the block is reached, by the activation-weighted search of
``int4_blocks`` over the weights as the earlier channels' errors left them.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (2022), describe the method; this is a numpy rendering of it for one matrix.
"""

from __future__ import annotations

import numpy as np

from converters.int4_blocks import Blocks, levels, pack_nibbles, search_scales

DAMPING = 0.01  # of the mean diagonal, added to the Gram matrix
SHRINK = 0.5  # pull of the Gram matrix toward its diagonal (plain weighted rounding)
_LAZY = 128  # channels rounded before the rest of the matrix is updated (one BLAS call)


def gram(activations: np.ndarray) -> np.ndarray:
    """Mean outer product [K, K] (float64) of [tokens, K] activations."""
    x = activations.reshape(-1, activations.shape[-1]).astype(np.float64)
    return x.T @ x / max(len(x), 1)


def _inverse_factor(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of the damped Gram matrix's inverse."""
    diagonal = np.diag(h).copy()
    diagonal[diagonal == 0] = 1.0  # channels never active: plain rounding
    h = h * (1 - SHRINK)
    h[np.diag_indices_from(h)] = diagonal + DAMPING * float(np.mean(diagonal))
    inverse = np.linalg.inv(h)
    return np.linalg.cholesky((inverse + inverse.T) / 2).T


def gptq_blocks(weight: np.ndarray, h: np.ndarray, block_size: int) -> Blocks:
    """Quantize a [K, N] weight along K with error compensation under Gram matrix ``h``."""
    k, n = weight.shape
    padded = -(-k // block_size) * block_size
    rows = np.zeros((n, padded), np.float32)  # one row per output, channels along it
    rows[:, :k] = weight.T
    gram_padded = np.zeros((padded, padded))
    gram_padded[:k, :k] = h
    factor = _inverse_factor(gram_padded).astype(np.float32)
    importance = np.diag(gram_padded).astype(np.float32) + 1e-12
    q = np.empty((n, padded), np.uint8)
    scales = np.empty((n, padded // block_size), np.float32)
    lazy = max(_LAZY // block_size, 1) * block_size
    for start in range(0, padded, lazy):
        end = min(start + lazy, padded)
        chunk = rows[:, start:end]  # a view: updated in place
        errors = np.empty_like(chunk)
        local = factor[start:end, start:end]
        for j in range(end - start):
            if j % block_size == 0:
                block = chunk[:, j : j + block_size]
                channel = importance[start + j : start + j + block_size]
                scale = search_scales(block, np.broadcast_to(channel, block.shape))
                scales[:, (start + j) // block_size] = scale
            level = levels(chunk[:, j], scale)
            q[:, start + j] = (level + 8).astype(np.uint8)
            error = (chunk[:, j] - level * scale) / local[j, j]
            chunk[:, j + 1 :] -= np.outer(error, local[j, j + 1 :])
            errors[:, j] = error
        rows[:, end:] -= errors @ factor[start:end, end:]
    packed = pack_nibbles(q.reshape(n, -1, block_size))
    return packed, scales.reshape(-1), None
