"""Bounded Streamlit caches around the engine's heavy calls.

Models are cached as resources by (source, device) and are never modified: masking works on a
copy (``apply_masks``). Numbers are cached as data by (model key, layer, metric, device), with
the model itself passed as an unhashed ``_model`` argument and the hashable key standing for it.
Moving a slider therefore never recomputes a distance: only :mod:`dashboard.summary` runs.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import streamlit as st
import torch
from torch import Tensor, nn

import fpgm_core
from fpgm_core import LayerInfo, LoadedModel, input_producers, layer_filters, layer_flops, prunable_layers

from .figures import MatrixImage, filter_order, matrix_image
from .projections import mds_2d, pca_2d
from .sources import ModelSource, build_source

__all__ = [
    "ModelKey",
    "load_model",
    "model_layers",
    "layer_scores",
    "all_layer_scores",
    "scores_as_tensors",
    "distance_matrix",
    "heatmap_image",
    "projection",
    "model_flops",
    "model_producers",
]

# (source, device): all a cached number needs to know about the model it was computed on.
ModelKey = tuple[ModelSource, str]


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def load_model(source: ModelSource, device: str, _state: Mapping[str, Tensor] | None = None) -> LoadedModel:
    """The model of ``source`` on ``device``; shared by sessions, so never modify it."""
    return build_source(source, device, _state)


def _module(model: nn.Module, layer: str) -> nn.Module:
    return dict(model.named_modules())[layer]


@st.cache_data(max_entries=32, show_spinner=False)
def model_layers(_model: nn.Module, model_key: ModelKey) -> list[LayerInfo]:
    """The prunable layers of the model."""
    return prunable_layers(_model)


@st.cache_data(max_entries=4096, show_spinner=False)
def layer_scores(_model: nn.Module, model_key: ModelKey, layer: str, metric: str, device: str) -> np.ndarray:
    """FPGM scores (float64) of one layer's filters."""
    return fpgm_core.layer_scores(_model, metric, device=device, names=[layer])[layer].numpy()


@st.cache_data(max_entries=64, show_spinner="Scoring every layer…")
def all_layer_scores(_model: nn.Module, model_key: ModelKey, metric: str, device: str) -> dict[str, np.ndarray]:
    """FPGM scores of every prunable layer, from the per-layer cache (one entry, one lookup)."""
    return {layer.name: layer_scores(_model, model_key, layer.name, metric, device) for layer in model_layers(_model, model_key)}


def scores_as_tensors(scores: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Cached numpy scores as the tensors the engine's plan functions take (no copy)."""
    return {name: torch.from_numpy(values) for name, values in scores.items()}


@st.cache_data(max_entries=8, show_spinner="Computing filter distances…")
def distance_matrix(_model: nn.Module, model_key: ModelKey, layer: str, metric: str, device: str) -> np.ndarray:
    """The layer's N×N filter-distance matrix, float32 on the CPU."""
    weight = layer_filters(_module(_model, layer))
    return fpgm_core.distance_matrix(weight, metric, device=device).to("cpu", torch.float32).numpy()


@st.cache_data(max_entries=8, show_spinner=False)
def heatmap_image(
    _model: nn.Module, model_key: ModelKey, layer: str, metric: str, device: str, by_score: bool, pooled_size: int | None
) -> MatrixImage:
    """A large layer's distance matrix in display order, encoded as the heatmap's image.

    With ``pooled_size`` the N² matrix is never formed: the engine's pooled view (mean distance
    between groups of consecutive filters, at most ``pooled_size`` groups) is encoded instead.
    """
    order = filter_order(layer_scores(_model, model_key, layer, metric, device), by_score)
    if pooled_size is not None:
        weight = layer_filters(_module(_model, layer))
        pooled, group = fpgm_core.pooled_distance_matrix(
            weight, metric, size=pooled_size, order=torch.from_numpy(order), device=device
        )
        return matrix_image(pooled.to(torch.float32).numpy(), group=group, filters=weight.shape[0])
    matrix = distance_matrix(_model, model_key, layer, metric, device)
    return matrix_image(matrix[np.ix_(order, order)])


@st.cache_data(max_entries=64, show_spinner=False)
def projection(_model: nn.Module, model_key: ModelKey, layer: str, method: str, metric: str, device: str) -> np.ndarray:
    """(N, 2) coordinates of the layer's filters: PCA of weights, or MDS of ``metric`` distances."""
    if method == "MDS":
        return mds_2d(distance_matrix(_model, model_key, layer, metric, device))
    return pca_2d(layer_filters(_module(_model, layer)).cpu())


@st.cache_data(max_entries=16, show_spinner="Counting FLOPs…")
def model_flops(_model: nn.Module, model_key: ModelKey, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one forward pass and FLOPs per module (``torch.utils.flop_counter``)."""
    return layer_flops(_model, input_shape, device=model_key[1])


@st.cache_data(max_entries=16, show_spinner=False)
def model_producers(_model: nn.Module, model_key: ModelKey) -> dict[str, str]:
    """Which prunable layer feeds each prunable layer directly (for the after-pruning estimate)."""
    return input_producers(_model)
