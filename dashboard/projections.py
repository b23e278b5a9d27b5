"""Two-dimensional views of a layer's filters: PCA of their weights, classical MDS of their distances.

No scikit-learn: PCA is a low-rank SVD (``torch.pca_lowrank``); classical MDS double-centres the
squared distance matrix and keeps its two leading eigenvectors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["PROJECTIONS", "pca_2d", "mds_2d"]

PROJECTIONS = ("PCA", "MDS")
# Up to this size a full symmetric eigendecomposition is fast (~20 ms); above, a randomized one is
# (2048 filters: ~0.1 s in float32, where a float64 eigh takes seconds on two cores).
_EXACT_EIGH = 512


def _pad(coords: Tensor, n: int) -> np.ndarray:
    out = np.zeros((n, 2), dtype=np.float64)
    values = coords.detach().to(torch.float64).cpu().numpy()
    out[:, : values.shape[1]] = values[:, :2]
    return out


def pca_2d(filters: Tensor) -> np.ndarray:
    """(N, 2) coordinates of the N flattened filters on their two principal axes."""
    matrix = filters.detach().reshape(filters.shape[0], -1).to(torch.float32)
    n, d = matrix.shape
    centred = matrix - matrix.mean(dim=0, keepdim=True)
    rank = min(2, n, d)
    if rank == 0 or not bool(centred.any()):
        return np.zeros((n, 2))
    if min(n, d) <= 2:
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        return _pad(centred @ vh[:rank].T, n)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the randomized SVD should draw the same picture every time
    try:
        _, _, v = torch.pca_lowrank(centred, q=min(6, n, d), center=False, niter=4)
    finally:
        torch.random.set_rng_state(generator_state)
    return _pad(centred @ v[:, :2], n)


def mds_2d(distances: Tensor | np.ndarray) -> np.ndarray:
    """(N, 2) classical (Torgerson) MDS coordinates that best preserve the given distances."""
    d = torch.as_tensor(np.asarray(distances), dtype=torch.float32)
    n = d.shape[0]
    if n < 2:
        return np.zeros((n, 2))
    squared = d * d
    b = -0.5 * (squared - squared.mean(dim=0, keepdim=True) - squared.mean(dim=1, keepdim=True) + squared.mean())
    if n <= _EXACT_EIGH:
        values, vectors = torch.linalg.eigh(b)
        values, vectors = values.flip(0)[:2], vectors.flip(1)[:, :2]
    else:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            u, _, _ = torch.svd_lowrank(b, q=8, niter=4)
        finally:
            torch.random.set_rng_state(generator_state)
        # Singular vectors may belong to negative eigenvalues (non-Euclidean metrics): keep the top two by Rayleigh quotient.
        quotients = ((b @ u) * u).sum(dim=0)
        best = torch.argsort(quotients, descending=True)[:2]
        values, vectors = quotients[best], u[:, best]
    return _pad(vectors * values.clamp(min=0).sqrt(), n)
