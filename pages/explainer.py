"""How FPGM works: the geometric median, why filters near it are redundant, the three-filter example,
and the same picture drawn on a layer of the loaded model."""

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from dashboard.projections import principal_axes
from dashboard.state import active_model, require_entry
from fpgm_core import fpgm_scores, layer_filters, mask_from_scores, prune_count
from fpgm_core.criteria import filter_norms, geometric_median

FPGM_COLOR = "#d62728"
NORM_COLOR = "#ff7f0e"
KEPT_COLOR = "#1f77b4"
MEDIAN_COLOR = "#f2b701"
# Size guards, as the Heatmaps page has them: up to EXACT_WEIGHTS weights in a layer (ViT-B/16's
# largest, 3072×768, has 2.4 M) the view is exact: float64 SVD, 300 Weiszfeld steps. Up to
# MAX_WEIGHTS (vgg16's 4096×4096 classifier layer) it is approximate: randomized float32 axes and
# 50 steps, a few seconds. Beyond (vgg16's 4096×25088 first classifier layer, 103 M weights, where
# the exact view would take minutes and gigabytes) the page says so and draws nothing.
EXACT_WEIGHTS = 1 << 22
MAX_WEIGHTS = 1 << 24

INTRO = r"""
**Filter Pruning via Geometric Median** (He et al., CVPR 2019) removes whole filters — output channels — of each
convolution. Which ones? Think of a layer's $N$ filters $F_1, \dots, F_N$ as points in weight space. Their
**geometric median** is the point $x^*$ that minimises the summed distance to all of them,

$$x^* = \arg\min_x \sum_{j=1}^{N} \lVert x - F_j \rVert_2 ,$$

a robust "centre" of the layer. A filter lying near it holds what the other filters already hold between them:
remove it and the rest can stand in for it, so the layer loses little. FPGM does not compute $x^*$; it gives each
filter the score $s_i = \sum_j \lVert F_i - F_j \rVert$ and prunes the filters with the smallest scores, the ones
nearest the median.

The older rule, *smaller norm, less important*, prunes the filters with the smallest $\lVert F_i \rVert$. It works
when some filters are close to zero; it says nothing when all norms are similar, and it keeps a filter that
duplicates others as long as its norm is large. FPGM looks at redundancy instead of size.
"""


def page() -> None:
    st.title("How FPGM works")
    st.markdown(INTRO)
    _three_filters()
    st.divider()
    _live_layer()


def _three_filters() -> None:
    st.subheader("Three filters")
    st.markdown(
        "Three 3×3 filters, each filled with one value: 3.0, 2.0 and 0.1 (the case PyTorch's own FPGMPruner test uses). "
        "Prune one. Norm pruning drops 0.1, the smallest. FPGM drops 2.0: it lies at the geometric median of the three, "
        "and 3.0 points the same way, so the layer keeps what 2.0 did, plus the small filter that no other filter resembles."
    )
    session = st.session_state
    for key, value in (("explain_a", 3.0), ("explain_b", 2.0), ("explain_c", 0.1)):
        session.setdefault(key, value)
    cells = st.columns(3)
    values = [
        cells[i].number_input(f"Filter {i} value", -10.0, 10.0, step=0.1, key=key, persist_state="session")
        for i, key in enumerate(("explain_a", "explain_b", "explain_c"))
    ]
    weight = torch.tensor(values, dtype=torch.float64)[:, None, None, None].expand(3, 1, 3, 3).contiguous()
    norms = filter_norms(weight, 2)
    scores = fpgm_scores(weight, "l2", device="cpu")
    by_norm = int(torch.argmin(norms))
    by_fpgm = int((~mask_from_scores(scores, 1)).nonzero()[0])
    median = float(geometric_median(weight)[0])
    table = pd.DataFrame(
        {
            "value": values,
            "L2 norm": norms.numpy(),
            "FPGM score": scores.numpy(),
            "norm drops": ["✂" if i == by_norm else "" for i in range(3)],
            "FPGM drops": ["✂" if i == by_fpgm else "" for i in range(3)],
        },
        index=[f"filter {i}" for i in range(3)],
    )
    left, right = st.columns([3, 2], gap="large")
    left.dataframe(table, width="stretch", column_config={
        "L2 norm": st.column_config.NumberColumn(format="%.2f"),
        "FPGM score": st.column_config.NumberColumn(format="%.2f", help="Σ of L2 distances to the three filters"),
    })
    left.markdown(
        f"Norm pruning drops **filter {by_norm}** (value {values[by_norm]:g}): the smallest. FPGM drops **filter {by_fpgm}** "
        f"(value {values[by_fpgm]:g}): it sits at the geometric median ({median:.3g} per weight), so the two others span "
        "what it does. Computed live with `fpgm_core`: change the values and watch the two choices."
    )
    right.plotly_chart(_line_figure(values, median, by_norm, by_fpgm), key="explain_line", config={"displaylogo": False})


def _line_figure(values: list[float], median: float, by_norm: int, by_fpgm: int) -> go.Figure:
    """The three filters on a line (every weight of a filter has the same value), the median above."""
    fig = go.Figure()
    fig.add_vline(x=median, line_dash="dot", line_color="#999")
    fig.add_trace(go.Scatter(
        x=values, y=[0, 0, 0], mode="markers+text", text=[f"filter {i}" for i in range(3)], textposition="bottom center",
        marker=dict(size=16, color=[FPGM_COLOR if i == by_fpgm else KEPT_COLOR for i in range(3)],
                    line=dict(color=[NORM_COLOR if i == by_norm else "#fff" for i in range(3)], width=4)),
        hovertemplate="value %{x}<extra></extra>", showlegend=False,
    ))
    fig.add_trace(go.Scatter(x=[median], y=[0.8], mode="markers", name="geometric median",
                             marker=dict(symbol="star", size=20, color=MEDIAN_COLOR, line=dict(color="#333", width=1)),
                             hovertemplate=f"geometric median: {median:.3g}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="FPGM drops", marker=dict(size=12, color=FPGM_COLOR)))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="norm pruning drops",
                             marker=dict(size=12, color="#fff", line=dict(color=NORM_COLOR, width=4))))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=40, b=40), legend=dict(orientation="h", y=1.25, x=0),
                      xaxis=dict(title="weight value", zeroline=False), yaxis=dict(visible=False, range=[-1, 1.3]))
    return fig


@st.cache_data(max_entries=32, show_spinner="Finding the geometric median of the layer's filters…")
def _layer_view(_model, model_key, layer: str) -> dict[str, np.ndarray]:
    """PCA coordinates of the layer's filters and of their geometric median, with scores and norms.

    Exact up to EXACT_WEIGHTS weights; approximate (randomized axes, fewer median steps) above.
    """
    weight = layer_filters(dict(_model.named_modules())[layer]).detach().to("cpu")
    exact = weight.numel() <= EXACT_WEIGHTS
    matrix = weight.reshape(weight.shape[0], -1).to(torch.float64 if exact else torch.float32)
    median = geometric_median(matrix, iterations=300 if exact else 50, tolerance=1e-10 if exact else 1e-6).to(matrix.dtype)
    mean = matrix.mean(dim=0)
    if exact:
        # Exact principal axes; a median is projected with the same axes, which a fitted view could not do.
        _, _, vh = torch.linalg.svd(matrix - mean, full_matrices=False)
        axes = vh[:2].T
        if axes.shape[1] < 2:
            axes = torch.cat([axes, torch.zeros(axes.shape[0], 2 - axes.shape[1], dtype=axes.dtype)], dim=1)
    else:
        axes = principal_axes(matrix - mean, 2)
    return {
        "coords": ((matrix - mean) @ axes).double().numpy(),
        "median": ((median - mean) @ axes).double().numpy(),
        "scores": fpgm_scores(weight, "l2", device="cpu").double().numpy(),
        "norms": filter_norms(weight.double(), 2).numpy(),
        "to_median": (matrix - median).norm(dim=1).double().numpy(),
        "exact": exact,
    }


def _live_layer() -> None:
    st.subheader("On the loaded model")
    active = active_model()
    session = st.session_state
    names = [layer.name for layer in active.layers]
    if session.get("explain_layer") not in names:
        heat = session.get("heat_layer")
        session.explain_layer = heat if heat in names else names[0]
    session.setdefault("explain_pct", int(session.get("sparsity_pct", 30)))
    controls = st.columns([3, 3, 2], gap="medium", vertical_alignment="bottom")
    layer = controls[0].selectbox("Layer", names, key="explain_layer", persist_state="session",
                                  format_func=lambda name: f"{name} · {active.layer(name).filters} filters")
    pct = controls[1].slider("Prune", 0, 95, key="explain_pct", persist_state="session", format="%d%%")
    if controls[2].button("Open in Heatmaps", key="explain_open_heatmaps", icon=":material/grid_on:"):
        session.heat_layer = layer
        st.switch_page("pages/heatmaps.py")
    info = active.layer(layer)
    weights = math.prod(info.weight_shape)
    if weights > MAX_WEIGHTS:
        st.info(f"**{layer}** has {info.filters:,} filters of {weights // info.filters:,} weights ({weights / 1e6:.0f} M in all): "
                f"too many to draw its geometric median here (this page draws layers of up to {MAX_WEIGHTS / 1e6:.1f} M "
                "weights). Pick a smaller layer; this one's scores and distances are on the Heatmaps page.",
                icon=":material/speed:")
        return
    view = _layer_view(active.model, active.key, layer)
    if not view["exact"]:
        st.caption(f"{weights / 1e6:.1f} M weights: the axes are a randomized PCA and the median 50 Weiszfeld steps "
                   "(approximate, to keep the page quick).")
    n = len(view["scores"])
    count = prune_count(pct / 100, n)
    fpgm_pruned = ~mask_from_scores(torch.from_numpy(view["scores"]), count).numpy()
    norm_pruned = ~mask_from_scores(torch.from_numpy(view["norms"]), count).numpy()
    both = int((fpgm_pruned & norm_pruned).sum())
    correlation = float(np.corrcoef(view["to_median"], view["scores"])[0, 1]) if n > 2 and np.std(view["scores"]) > 0 else float("nan")
    st.markdown(
        f"**{layer}**: {count} of {n} filters pruned. FPGM and norm pruning agree on **{both} of {count}**. "
        f"Correlation between a filter's FPGM score and its distance to the geometric median: **{correlation:.2f}** — "
        "the score is a cheap stand-in for that distance."
    )
    left, right = st.columns(2, gap="large")
    left.plotly_chart(_projection_figure(view, fpgm_pruned, norm_pruned), key="explain_projection", config={"displaylogo": False})
    left.caption("Filters on their two principal axes (PCA of the weights); the star is the geometric median, projected "
                 "on the same axes. Distances in the full weight space decide; a 2-D view only hints at them.")
    right.plotly_chart(_score_figure(view, fpgm_pruned, norm_pruned), key="explain_scores", config={"displaylogo": False})
    right.caption("Each filter: its FPGM score (up) against its distance to the geometric median (across). FPGM prunes the lowest "
                  "scores; norm pruning prunes the smallest norms wherever they lie.")
    st.page_link("pages/heatmaps.py", label="The full distance matrix of a layer is on the Heatmaps page", icon=":material/grid_on:")


def _marker_groups(fpgm_pruned: np.ndarray, norm_pruned: np.ndarray):
    yield "kept by both", ~fpgm_pruned & ~norm_pruned, dict(color=KEPT_COLOR, symbol="circle", size=7)
    yield "FPGM prunes", fpgm_pruned & ~norm_pruned, dict(color=FPGM_COLOR, symbol="x", size=9)
    yield "norm pruning prunes", norm_pruned & ~fpgm_pruned, dict(color="#fff", symbol="circle", size=10, line=dict(color=NORM_COLOR, width=3))
    yield "both prune", fpgm_pruned & norm_pruned, dict(color=FPGM_COLOR, symbol="x", size=11, line=dict(color=NORM_COLOR, width=2))


def _projection_figure(view: dict, fpgm_pruned: np.ndarray, norm_pruned: np.ndarray) -> go.Figure:
    coords, index = view["coords"], np.arange(len(view["scores"]))
    fig = go.Figure()
    for name, selected, marker in _marker_groups(fpgm_pruned, norm_pruned):
        fig.add_trace(go.Scatter(
            x=coords[selected, 0], y=coords[selected, 1], mode="markers", name=name, marker=marker,
            customdata=np.stack([index[selected], view["scores"][selected], view["norms"][selected]], axis=1),
            hovertemplate="filter %{customdata[0]:.0f}<br>FPGM score %{customdata[1]:.4g}<br>norm %{customdata[2]:.4g}<extra></extra>",
        ))
    fig.add_trace(go.Scatter(x=[view["median"][0]], y=[view["median"][1]], mode="markers", name="geometric median",
                             marker=dict(symbol="star", size=20, color=MEDIAN_COLOR, line=dict(color="#333", width=1))))
    fig.update_layout(height=400, margin=dict(l=10, r=10, t=10, b=40), legend=dict(orientation="h", y=1.12),
                      xaxis=dict(title="PCA 1", zeroline=False), yaxis=dict(title="PCA 2", zeroline=False))
    return fig


def _score_figure(view: dict, fpgm_pruned: np.ndarray, norm_pruned: np.ndarray) -> go.Figure:
    index = np.arange(len(view["scores"]))
    fig = go.Figure()
    for name, selected, marker in _marker_groups(fpgm_pruned, norm_pruned):
        fig.add_trace(go.Scatter(
            x=view["to_median"][selected], y=view["scores"][selected], mode="markers", name=name, marker=marker, showlegend=False,
            customdata=np.stack([index[selected], view["norms"][selected]], axis=1),
            hovertemplate="filter %{customdata[0]:.0f}<br>distance to median %{x:.4g}<br>FPGM score %{y:.4g}"
                          "<br>norm %{customdata[1]:.4g}<extra></extra>",
        ))
    fig.update_layout(height=400, margin=dict(l=10, r=10, t=10, b=40),
                      xaxis=dict(title="L2 distance to the geometric median"), yaxis=dict(title="FPGM score (Σ L2 distances)"))
    return fig


require_entry(__file__)
page()
