"""Symmetric int4 blocks with the rounding error of each input channel compensated (GPTQ).

Rounding a weight row channel by channel, the error of channel ``k`` is folded into the
channels not yet rounded, in the proportion that best cancels it in the layer's output on
the calibration activations (the inverse of their Gram matrix says how). The grid is the
fast kernels' own (``w = d * (q - 8)``, a scale per block of ``block_size`` channels); each
block's scale is chosen, when the block is reached, by the activation-weighted search of
``int4_blocks`` over the weights as the earlier channels' errors left them.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (2022), describe the method; this renders it for one matrix in numpy and scipy.
"""

from __future__ import annotations

import numpy as np

from converters.int4_blocks import Blocks, by_blocks, pack_nibbles, search_scales

DAMPING = 0.01  # of the mean diagonal, added to the Gram matrix
# Pull of the Gram matrix toward its diagonal (at 1: the scale search alone). ~600 calibration
# tokens leave a wide layer's Gram matrix far from full rank; unshrunk, the compensation
# overfits them (docs/benchmarks.md, "Quality variants", has the held-out figures).
SHRINK = 0.5


def gram(activations: np.ndarray) -> np.ndarray:
    """Mean outer product [K, K] (float64) of [tokens, K] activations."""
    x = activations.reshape(-1, activations.shape[-1]).astype(np.float64)
    return x.T @ x / max(len(x), 1)


def _inverse_factor(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor ``U`` of the damped Gram matrix's inverse (``U.T @ U = H^-1``).

    With ``J`` the reversal permutation and ``L`` the lower Cholesky factor of ``J H J``,
    ``U = J L^-1 J``: one factorization and one triangular inverse, no general inverse.
    """
    from scipy.linalg import cholesky, lapack

    diagonal = np.diag(h).copy()
    diagonal[diagonal == 0] = 1.0  # channels never active: plain rounding
    h = h * (1 - SHRINK)
    h[np.diag_indices_from(h)] = diagonal + DAMPING * float(np.mean(diagonal))
    # Damped, the matrix is well conditioned: float32 halves the time of the K^3 steps.
    lower = cholesky(h[::-1, ::-1].astype(np.float32), lower=True)
    inverse, info = lapack.strtri(lower, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"triangular inverse failed (info {info})")
    return np.ascontiguousarray(inverse[::-1, ::-1])


def gptq_blocks(weight: np.ndarray, h: np.ndarray, block_size: int) -> Blocks:
    """Quantize a [K, N] weight along K with error compensation under Gram matrix ``h``."""
    k, n = weight.shape
    rows = np.ascontiguousarray(by_blocks(weight, block_size).reshape(n, -1))  # zero-padded
    padded = rows.shape[1]
    gram_padded = np.zeros((padded, padded))
    gram_padded[:k, :k] = h
    factor = _inverse_factor(gram_padded)
    importance = np.diag(gram_padded).astype(np.float32) + 1e-12
    q = np.empty((n, padded), np.uint8)
    scales = np.empty((n, padded // block_size), np.float32)
    # One block at a time: its channels are rounded one by one, each error folded into the
    # block's later channels; then one BLAS call folds the block's errors into the rest.
    for start in range(0, padded, block_size):
        end = start + block_size
        block = rows[:, start:end]
        scale = search_scales(block, np.broadcast_to(importance[start:end], block.shape))
        scales[:, start // block_size] = scale
        # int4_blocks.levels, but a product instead of a quotient: this loop is the hot path.
        inverse_scale = 1.0 / np.where(scale == 0, 1.0, scale)
        channels = np.ascontiguousarray(block.T)  # [block_size, n]: each channel contiguous
        errors = np.empty_like(channels)
        local = factor[start:end, start:end]
        for j in range(block_size):
            level = np.clip(np.rint(channels[j] * inverse_scale), -8, 7)
            q[:, start + j] = (level + 8).astype(np.uint8)
            errors[j] = (channels[j] - level * scale) / local[j, j]
            channels[j + 1 :] -= local[j, j + 1 :, None] * errors[j]
        rows[:, end:] -= errors.T @ factor[start:end, end:]
    packed = pack_nibbles(q.reshape(n, -1, block_size))
    return packed, scales.reshape(-1), None
