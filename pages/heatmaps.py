"""Heatmaps page: a layer's filter-distance matrix, its FPGM scores with the cut, and a 2-D map of its filters."""

import numpy as np
import streamlit as st

from dashboard import cache, figures
from dashboard.figures import filter_order, heatmap_figure, kernel_figure, projection_figure, score_figure
from dashboard.projections import PROJECTIONS
from dashboard.state import (
    METRIC_LABELS,
    ORDER_LABELS,
    SPARSITY_RANGE,
    active_model,
    current_plan,
    layer_keep,
    plan_description,
    plan_error,
    require_entry,
)
from fpgm_core import METRICS, LayerInfo, PlanError, layer_filters

CHART_CONFIG = {"displaylogo": False}


def page() -> None:
    st.title("Filter distances")
    active = active_model()
    layer, metric, by_score = _controls(active)
    plan = current_plan()
    scores = cache.layer_scores(active.model, active.key, layer.name, metric, active.device)
    try:
        keep = layer_keep(active, plan, layer.name, scores)
    except PlanError as exc:
        plan_error(exc)
        return
    order = filter_order(scores, by_score)
    left, right = st.columns([3, 2], gap="medium")
    with left, st.container(key="heatmap_panel"):
        _heatmap(active, layer, metric, by_score, keep, order)
    with right:
        st.markdown(f"**FPGM scores** · {int((~keep).sum())} of {layer.filters} filters pruned · plan {plan_description(plan)}")
        st.plotly_chart(score_figure(scores, keep, order, by_score=by_score), key="scores", config=CHART_CONFIG)
        st.caption(
            "A filter's score is its summed distance to every other filter in the layer. The lowest-scored "
            "filters sit nearest the geometric median, so the others can stand in for them: FPGM prunes those."
        )
        _projection(active, layer, metric, keep, scores)
    _kernels(active, layer.name, keep)


def _controls(active) -> tuple[LayerInfo, str, bool]:
    """Layer, metric, order and the shared global sparsity, in one row."""
    names = [layer.name for layer in active.layers]
    if st.session_state.heat_layer not in names:  # a new model: start at its first layer
        st.session_state.heat_layer = names[0]
    row = st.columns([3, 2, 2, 3], gap="medium")
    name = row[0].selectbox(
        "Layer", names, key="heat_layer", persist_state="session",
        format_func=lambda n: f"{n} · {active.layer(n).type} · {active.layer(n).filters} filters",
    )
    metric = row[1].radio("Metric", METRICS, format_func=METRIC_LABELS.get, horizontal=True, key="metric",
                          persist_state="session")
    order = row[2].radio("Order", list(ORDER_LABELS), format_func=ORDER_LABELS.get, horizontal=True,
                         key="order", persist_state="session")
    row[3].slider("Global sparsity", **SPARSITY_RANGE, format="%d%%", help="Shared with the Sparsity page.",
                  key="sparsity_pct", persist_state="session")
    return active.layer(name), metric, order == "score"


def _heatmap(active, layer: LayerInfo, metric: str, by_score: bool, keep: np.ndarray, order: np.ndarray) -> None:
    """The distance matrix: a heatmap, or for large layers one image (of the pooled view for huge ones)."""
    matrix = image = None
    if layer.filters > figures.IMAGE_THRESHOLD:
        pooled_size = figures.POOLED_SIZE if layer.filters > figures.POOL_THRESHOLD else None
        image = cache.heatmap_image(active.model, active.key, layer.name, metric, active.device, by_score, pooled_size)
    else:
        matrix = cache.distance_matrix(active.model, active.key, layer.name, metric, active.device)
    figure, mode = heatmap_figure(matrix, keep, order, metric=METRIC_LABELS[metric], by_score=by_score, image=image)
    figure.update_layout(meta={"layer": layer.name, "metric": metric, "mode": mode})  # lets browser tests tell charts apart
    st.plotly_chart(figure, key="heatmap", config=CHART_CONFIG)
    st.caption(_heatmap_caption(layer.filters, mode, int((~keep).sum()), image.group if image is not None else 1))


def _heatmap_caption(filters: int, mode: str, pruned: int, group: int) -> str:
    strips = f"The red strips along the top and left mark the {pruned} pruned filters."
    if group > 1:
        pixels = -(-filters // group)
        return (
            f"**Reduced view** of {filters} filters: too many to hold all {filters * filters:,} distances, so the "
            f"matrix is shown as {pixels}×{pixels} blocks: each pixel is the mean distance between two groups of "
            f"{group} consecutive filters (in the chosen order), from `fpgm_core.pooled_distance_matrix`, drawn as "
            f"one image; single filter pairs are not shown. {strips}"
        )
    if mode == "image":
        return (
            f"{filters} filters: drawn as one {filters}×{filters} image (`px.imshow`, binary string, JPEG) instead "
            f"of a {filters * filters:,}-cell heatmap, so the page stays responsive; hovering shows block averages. "
            f"Layers of up to {figures.IMAGE_THRESHOLD} filters are drawn as heatmaps with exact per-pair hover. {strips}"
        )
    return (
        f"Hover a cell for the two filters and their distance. {strips} Colours span the smallest to the largest "
        "distance between two different filters; dark rows are filters close to all others."
    )


def _projection(active, layer: LayerInfo, metric: str, keep: np.ndarray, scores: np.ndarray) -> None:
    method = st.radio("Projection", PROJECTIONS, horizontal=True, key="projection", persist_state="session",
                      help="PCA of the filter weights, or classical MDS of the distances shown on the left.")
    if method == "MDS" and layer.filters > figures.POOL_THRESHOLD:
        st.caption(f"MDS needs all {layer.filters}² distances; showing PCA for this layer.")
        method = "PCA"
    coords = cache.projection(active.model, active.key, layer.name, method, metric, active.device)
    st.plotly_chart(projection_figure(coords, keep, scores, method=method), key="projection_chart", config=CHART_CONFIG)


def _kernels(active, layer: str, keep: np.ndarray) -> None:
    """The kernels as small images, for a first convolution that sees 1 or 3 image channels."""
    module = dict(active.model.named_modules())[layer]
    weight = layer_filters(module)
    image_input = weight.dim() == 4 and weight.shape[1] in (1, 3) and getattr(module, "groups", 1) == 1
    if not image_input or "Transpose" in type(module).__name__:
        return
    st.markdown(f"**Kernels of `{layer}`** · {weight.shape[0]} filters of {weight.shape[2]}×{weight.shape[3]} over "
                f"{'RGB' if weight.shape[1] == 3 else 'grey'} input · pruned ones framed in red")
    st.plotly_chart(kernel_figure(weight.detach().cpu().float().numpy(), keep), key="kernels", config=CHART_CONFIG)
    st.caption("Each kernel is scaled to its own range, row-major by filter index; hover for its index.")


require_entry(__file__)
page()
