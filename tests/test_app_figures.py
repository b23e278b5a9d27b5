"""The dashboard's pure pieces: figure builders and projections, on small known inputs."""

from __future__ import annotations

import numpy as np
import torch

from dashboard.figures import (
    filter_order,
    heatmap_figure,
    kernel_figure,
    matrix_image,
    projection_figure,
    score_figure,
    sparsity_figure,
)
from dashboard.projections import mds_2d, pca_2d
from dashboard.summary import format_count, layer_table

import fpgm_core


def pairwise(points: np.ndarray) -> np.ndarray:
    return np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))


def test_mds_recovers_planar_distances_small_and_large():
    rng = np.random.default_rng(0)
    for n in (40, 700):  # exact eigendecomposition, then the randomized one
        points = rng.normal(size=(n, 2))
        coords = mds_2d(pairwise(points))
        np.testing.assert_allclose(pairwise(coords), pairwise(points), atol=1e-4)


def test_pca_keeps_the_spread_of_filters_that_lie_in_a_plane():
    rng = np.random.default_rng(1)
    plane = rng.normal(size=(2, 27))
    weights = torch.tensor(rng.normal(size=(50, 2)) @ plane, dtype=torch.float32).reshape(50, 3, 3, 3)
    coords = pca_2d(weights)
    flat = weights.reshape(50, -1).numpy()
    np.testing.assert_allclose(pairwise(coords), pairwise(flat), rtol=1e-3, atol=1e-3)
    assert pca_2d(torch.zeros(4, 3)).tolist() == [[0.0, 0.0]] * 4
    assert pca_2d(torch.ones(1, 5)).shape == (1, 2)


def test_image_mode_matches_heatmap_mode_block_means():
    rng = np.random.default_rng(2)
    matrix = rng.random((40, 40)).astype(np.float32)
    matrix = (matrix + matrix.T) / 2
    np.fill_diagonal(matrix, 0)
    keep = np.ones(40, dtype=bool)
    keep[[3, 7]] = False
    order = filter_order(matrix.sum(1), True)
    image = matrix_image(matrix[np.ix_(order, order)])
    assert image.source.startswith("data:image/jpeg;base64,") and image.filters == 40 and image.group == 1
    np.testing.assert_allclose(image.means, matrix[np.ix_(order, order)], rtol=1e-6)  # 40 < 128: one cell per block
    figure, mode = heatmap_figure(None, keep, order, metric="L2", by_score=True, image=image, image_threshold=10)
    assert mode == "image"
    strip = next(trace for trace in figure.data if trace.type == "heatmap" and isinstance(trace.y, tuple) and trace.y == ("",))
    assert np.asarray(strip.z).reshape(-1).sum() == 2
    figure, mode = heatmap_figure(matrix, keep, order, metric="L2", by_score=True, image_threshold=100)
    assert mode == "heatmap" and list(figure.data[0].x) == [str(i) for i in order]


def test_score_figure_draws_the_cut_between_pruned_and_kept():
    scores = np.array([5.0, 1.0, 3.0, 2.0])
    keep = np.array([True, False, True, False])
    figure = score_figure(scores, keep, filter_order(scores, True), by_score=True)
    kept, pruned = figure.data
    assert list(pruned.x) == ["1", "3"] and list(kept.x) == ["2", "0"]
    assert figure.layout.shapes[0].y0 == 2.5  # halfway between the highest pruned (2) and lowest kept (3)
    assert figure.layout.shapes[1].x0 == 1.5


def test_projection_kernel_and_sparsity_figures():
    scores = np.array([3.0, 1.0, 2.0])
    keep = np.array([True, False, True])
    figure = projection_figure(np.zeros((3, 2)), keep, scores, method="PCA")
    assert [trace.name for trace in figure.data] == ["kept", "pruned", "nearest the geometric median"]
    assert "filter 1:" in figure.data[2].hovertemplate
    kernels = kernel_figure(np.random.default_rng(0).normal(size=(3, 3, 5, 5)).astype(np.float32), keep)
    assert kernels.data[0].type == "image"
    model = fpgm_core.build_model("demo", "default").model
    layers = fpgm_core.prunable_layers(model)
    table = layer_table(layers, {layers[0].name: 4, layers[1].name: 2}, {layers[0].name: 0.25})
    assert table.loc[layers[0].name, "rule"] == "override" and table.loc[layers[-1].name, "rule"] == "output"
    assert {trace.name for trace in sparsity_figure(table).data} >= {"override", "from the plan"}


def test_format_count():
    assert format_count(11_689_512) == "11.69 M"
    assert format_count(1.82e9, "FLOPs") == "1.82 GFLOPs"
    assert format_count(950) == "950"
