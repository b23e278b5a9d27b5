"""Two-dimensional views of a layer's filters: PCA of their weights, classical MDS of their distances.

No scikit-learn: PCA is a low-rank SVD; classical MDS double-centres the squared distance matrix
and keeps its two leading eigenvectors. The randomized SVD draws its test vectors from a local
``torch.Generator`` seeded per call, so the picture is the same every time and the process-wide
RNG, which other sessions' threads use at the same moment, is neither read nor reset.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["PROJECTIONS", "pca_2d", "mds_2d", "principal_axes"]

PROJECTIONS = ("PCA", "MDS")
# Up to this size a full symmetric eigendecomposition is fast (~20 ms); above, a randomized one is
# (2048 filters: ~0.1 s in float32, where a float64 eigh takes seconds on two cores).
_EXACT_EIGH = 512
_SEED = 0


def _lowrank_svd(matrix: Tensor, q: int, niter: int) -> tuple[Tensor, Tensor, Tensor]:
    """Randomized SVD (Halko et al.; what ``torch.svd_lowrank`` does): ``u, s, v`` of rank ``q``.

    ``torch.svd_lowrank`` takes no generator and draws from the global RNG, hence this copy.
    """
    generator = torch.Generator(device=matrix.device).manual_seed(_SEED)
    probe = torch.randn(matrix.shape[1], q, generator=generator, dtype=matrix.dtype, device=matrix.device)
    basis = torch.linalg.qr(matrix @ probe).Q
    for _ in range(niter):  # power iterations sharpen the leading directions
        basis = torch.linalg.qr(matrix.mT @ basis).Q
        basis = torch.linalg.qr(matrix @ basis).Q
    u, s, vh = torch.linalg.svd(basis.mT @ matrix, full_matrices=False)
    return basis @ u, s, vh.mT


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
    _, _, v = _lowrank_svd(centred, q=min(6, n, d), niter=4)
    return _pad(centred @ v[:, :2], n)


def principal_axes(centred: Tensor, k: int = 2) -> Tensor:
    """(D, k) leading principal axes of the rows of ``centred`` (already centred), by randomized SVD;
    columns beyond the matrix's rank are zero."""
    n, d = centred.shape
    rank = min(k, n, d)
    axes = torch.zeros(d, k, dtype=centred.dtype)
    if rank:
        _, _, v = _lowrank_svd(centred, q=min(k + 4, n, d), niter=4)
        axes[:, :rank] = v[:, :rank]
    return axes


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
        u, _, _ = _lowrank_svd(b, q=8, niter=4)
        # Singular vectors may belong to negative eigenvalues (non-Euclidean metrics): keep the top two by Rayleigh quotient.
        quotients = ((b @ u) * u).sum(dim=0)
        best = torch.argsort(quotients, descending=True)[:2]
        values, vectors = quotients[best], u[:, best]
    return _pad(vectors * values.clamp(min=0).sqrt(), n)
