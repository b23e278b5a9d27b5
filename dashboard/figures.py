"""Plotly figures of the dashboard, as pure functions of numpy arrays (no Streamlit, no engine).

Conventions shared by every figure: filters are named by their index in the layer; pruned
filters are red, kept ones blue; the filter with the smallest FPGM score (the one nearest the
geometric median, the most replaceable) is a gold star.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

__all__ = [
    "IMAGE_THRESHOLD",
    "POOL_THRESHOLD",
    "POOLED_SIZE",
    "PRUNED_COLOR",
    "KEPT_COLOR",
    "filter_order",
    "MatrixImage",
    "matrix_image",
    "heatmap_figure",
    "score_figure",
    "projection_figure",
    "kernel_figure",
    "sparsity_figure",
]

# Above this many filters a heatmap's N² cells (each with its own hover) make the browser
# sluggish; the matrix is then sent as one image instead.
IMAGE_THRESHOLD = 512
# Above this many filters even the N² matrix is not held (4096² float32 is 64 MB, and it grows as
# N²): the engine's pooled view is shown instead, POOLED_SIZE² blocks of consecutive filters.
POOL_THRESHOLD = 4096
POOLED_SIZE = 1024
PRUNED_COLOR = "#d62728"
KEPT_COLOR = "#1f77b4"
MEDIAN_COLOR = "#f2b701"
_STRIP_KEPT = "#dcdcdc"
_COLORSCALE = "Viridis"
_LUT = np.array(
    [[float(c) for c in rgb[rgb.index("(") + 1 : -1].split(",")] for rgb in sample_colorscale(_COLORSCALE, 256)]
).round().astype(np.uint8)
# Blocks per side of the invisible hover layer laid over image-rendered matrices: 64² cells keep
# its hover data ~50 kB next to the image's ~1 MB.
_HOVER_BLOCKS = 64


def filter_order(scores: np.ndarray, by_score: bool) -> np.ndarray:
    """Filter indices in display order: ascending FPGM score (stable), or by index."""
    return np.argsort(scores, kind="stable") if by_score else np.arange(len(scores))


def _color_range(shown: np.ndarray) -> tuple[float, float]:
    """Smallest and largest distance between two different filters (the zero diagonal left out).

    Scaling the colours to these spends the whole colour scale on the distances that matter.
    """
    n = shown.shape[0]
    if n < 2:
        return 0.0, float(shown.max()) if shown.size else 1.0
    off_diagonal = ~np.eye(n, dtype=bool)
    values = shown[off_diagonal]
    return float(values.min()), float(values.max())


def _colorize(matrix: np.ndarray, low: float, high: float) -> np.ndarray:
    """RGB uint8 image of ``matrix`` through the Viridis lookup table, ``low``..``high`` → 0..255."""
    scaled = np.subtract(matrix, low, dtype=np.float32)
    scaled *= np.float32(255.0 / (high - low)) if high > low else np.float32(0.0)
    np.clip(scaled, 0, 255, out=scaled)
    np.rint(scaled, out=scaled)
    return _LUT[scaled.astype(np.uint8)]


@dataclass(frozen=True)
class MatrixImage:
    """A large distance matrix, already in display order, as its figure shows it.

    ``source`` is the matrix as one JPEG (a data URI, Viridis from ``low`` to ``high``), one pixel
    per ``group`` consecutive filters (1 = full resolution; more for the engine's pooled view of
    ``filters`` filters). ``means`` are coarser block means for the hover layer, block ``i`` spanning
    filter positions ``starts[i]``..``ends[i]``.
    """

    source: str
    filters: int
    group: int
    low: float
    high: float
    means: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def matrix_image(shown: np.ndarray, *, group: int = 1, filters: int | None = None) -> MatrixImage:
    """Encode a display-ordered distance matrix for :func:`heatmap_figure`'s image mode (the costly part).

    ``shown`` is the N×N matrix, or the engine's pooled view of ``filters`` filters in ``group``s.
    """
    pixels = shown.shape[0]
    filters = filters if filters is not None else pixels * group
    low, high = _color_range(shown)
    # JPEG: a 2048² matrix encodes in ~30 ms to ~0.5 MB, where PNG takes ~0.8 s and ~9 MB.
    image = px.imshow(_colorize(shown, low, high), binary_string=True, binary_format="jpg").data[0]
    block = math.ceil(pixels / _HOVER_BLOCKS)
    starts = np.arange(0, pixels, block)
    sizes = np.diff(np.append(starts, pixels))
    means = np.add.reduceat(np.add.reduceat(shown, starts, axis=0), starts, axis=1) / np.outer(sizes, sizes)
    ends = np.minimum((np.append(starts[1:], pixels)) * group, filters) - 1
    return MatrixImage(image.source, filters, group, low, high, means.astype(np.float32), starts * group, ends)


def heatmap_figure(
    matrix: np.ndarray | None,
    keep: np.ndarray,
    order: np.ndarray,
    *,
    metric: str,
    by_score: bool,
    image: MatrixImage | None = None,
    image_threshold: int | None = None,
) -> tuple[go.Figure, str]:
    """The N×N filter-distance heatmap, rows and columns in ``order``, pruned filters marked.

    Thin strips along the top and left are red where the filter is pruned. Up to
    ``image_threshold`` filters it is a plotly heatmap whose hover names both filters and their
    distance; above, the matrix is one image (``px.imshow(binary_string=True)``, JPEG) with a
    coarse, invisible block layer for hover. Pass ``image`` (from :func:`matrix_image` of the
    matrix, or of its pooled view, in this order) to reuse an encoded image; ``matrix`` is then
    not needed. Returns the figure and "heatmap" or "image".
    """
    n = len(order)
    image_threshold = IMAGE_THRESHOLD if image_threshold is None else image_threshold
    pruned = (~keep[order]).astype(np.int8)
    fig = make_subplots(
        rows=2, cols=2, row_heights=[0.03, 0.97], column_widths=[0.03, 0.97],
        horizontal_spacing=0.006, vertical_spacing=0.006, shared_xaxes=True, shared_yaxes=True,
    )
    axis_name = "filter (ascending FPGM score →)" if by_score else "filter index"
    strip_text = np.where(pruned == 1, "pruned", "kept")
    strip = dict(colorscale=[[0, _STRIP_KEPT], [1, PRUNED_COLOR]], zmin=0, zmax=1, showscale=False)
    if n <= image_threshold:
        mode = "heatmap"
        shown = matrix[np.ix_(order, order)]
        low, high = _color_range(shown)
        labels = [str(i) for i in order]
        fig.add_trace(
            go.Heatmap(
                z=shown, x=labels, y=labels, colorscale=_COLORSCALE, zmin=low, zmax=high,
                colorbar=dict(title=dict(text=f"{metric} distance", side="right"), thickness=14),
                hovertemplate="filter %{y} ↔ filter %{x}<br>distance %{z:.4g}<extra></extra>",
            ),
            row=2, col=2,
        )
        positions = labels
    else:
        mode = "image"
        image = image if image is not None else matrix_image(matrix[np.ix_(order, order)])
        # One pixel per group of filters, centred on the positions it covers.
        offset = (image.group - 1) / 2
        fig.add_trace(
            go.Image(source=image.source, x0=offset, dx=image.group, y0=offset, dy=image.group, hoverinfo="skip"),
            row=2, col=2,
        )
        fig.add_trace(_block_hover_layer(image, by_score, metric), row=2, col=2)
        positions = np.arange(n)
    fig.add_trace(
        go.Heatmap(z=[pruned], x=positions, y=[""], customdata=[strip_text], **strip,
                   hovertemplate="filter %{x}: %{customdata}<extra></extra>" if mode == "heatmap" else "%{customdata}<extra></extra>"),
        row=1, col=2,
    )
    fig.add_trace(
        go.Heatmap(z=pruned[:, None], x=[""], y=positions, customdata=strip_text[:, None], **strip,
                   hovertemplate="filter %{y}: %{customdata}<extra></extra>" if mode == "heatmap" else "%{customdata}<extra></extra>"),
        row=2, col=1,
    )
    fig.update_yaxes(autorange="reversed", row=2)
    fig.update_xaxes(showticklabels=False, row=1)
    # Row labels sit left of the pruned strip (the matrix shares its rows); column labels below.
    fig.update_yaxes(showticklabels=False, row=1)
    fig.update_yaxes(showticklabels=mode == "heatmap", row=2, col=1, tickfont=dict(size=10))
    fig.update_xaxes(showticklabels=False, col=1)
    fig.update_xaxes(title_text=axis_name if mode == "heatmap" else axis_name.replace("filter", "position"), row=2, col=2)
    fig.update_xaxes(showgrid=False, zeroline=False)
    fig.update_yaxes(showgrid=False, zeroline=False)
    fig.update_xaxes(ticks="")
    fig.update_yaxes(ticks="")
    if mode == "heatmap":
        # Filter indices are strings so that both axes keep the display order; the strips share them.
        fig.update_xaxes(type="category")
        fig.update_yaxes(type="category")
    else:
        fig.update_xaxes(range=[-0.5, n - 0.5], row=2, col=2)
        fig.update_yaxes(range=[n - 0.5, -0.5], autorange=False, row=2)
    fig.update_layout(height=620, margin=dict(l=10, r=10, t=10, b=40), plot_bgcolor="white")
    return fig, mode


def _block_hover_layer(image: MatrixImage, by_score: bool, metric: str) -> go.Heatmap:
    """A transparent heatmap of block means over an image, so hovering still tells where and how far."""
    span = "ranks" if by_score else "filters"
    centers = (image.starts + image.ends) / 2
    shape = image.means.shape
    return go.Heatmap(
        z=image.means, x=centers, y=centers, opacity=0.0, showscale=True, colorscale=_COLORSCALE,
        zmin=image.low, zmax=image.high, colorbar=dict(title=dict(text=f"{metric} distance", side="right"), thickness=14),
        customdata=np.stack(
            [
                np.broadcast_to(image.starts[None, :], shape), np.broadcast_to(image.ends[None, :], shape),
                np.broadcast_to(image.starts[:, None], shape), np.broadcast_to(image.ends[:, None], shape),
            ],
            axis=-1,
        ).astype(np.int32),
        hovertemplate=(
            f"{span} %{{customdata[2]}}–%{{customdata[3]}} ↔ {span} %{{customdata[0]}}–%{{customdata[1]}}"
            "<br>mean distance %{z:.4g}<extra></extra>"
        ),
    )


def score_figure(scores: np.ndarray, keep: np.ndarray, order: np.ndarray, *, by_score: bool) -> go.Figure:
    """Per-filter FPGM score bars in display order, pruned in red, with the cut line.

    The dashed horizontal line is the score threshold between the highest pruned and the lowest
    kept filter; in score order the cut is also a vertical line after the last pruned filter.
    """
    labels = [str(i) for i in order]
    shown, pruned = scores[order], ~keep[order]
    fig = go.Figure()
    for name, selected, color in (("kept", ~pruned, KEPT_COLOR), ("pruned", pruned, PRUNED_COLOR)):
        fig.add_trace(
            go.Bar(
                x=[label for label, s in zip(labels, selected) if s], y=shown[selected], name=name,
                marker_color=color, marker_line_width=0,
                hovertemplate="filter %{x}<br>score %{y:.5g}<extra>" + name + "</extra>",
            )
        )
    count = int(pruned.sum())
    if 0 < count < len(scores):
        cut = (float(scores[~keep].max()) + float(scores[keep].min())) / 2
        fig.add_hline(y=cut, line_dash="dash", line_color="#444", annotation_text="cut", annotation_position="top left")
        if by_score:
            fig.add_vline(x=count - 0.5, line_color="#444", line_width=1)
    low = float(shown.min()) if len(shown) else 0.0
    high = float(shown.max()) if len(shown) else 1.0
    pad = (high - low) * 0.08 or 1.0
    fig.update_layout(
        barmode="overlay", bargap=0.1 if len(scores) <= 128 else 0.0, height=300,
        margin=dict(l=10, r=10, t=10, b=40), legend=dict(orientation="h", y=1.08, x=1, xanchor="right"),
        xaxis=dict(type="category", categoryorder="array", categoryarray=labels,
                   title="filter (ascending score →)" if by_score else "filter index", showticklabels=len(scores) <= 64),
        yaxis=dict(title="FPGM score (Σ distances)", range=[max(low - pad, 0.0), high + pad]),
    )
    return fig


def projection_figure(coords: np.ndarray, keep: np.ndarray, scores: np.ndarray, *, method: str) -> go.Figure:
    """Filters as points in 2-D (PCA of their weights, or MDS of their distances).

    Kept and pruned filters are separate traces; the lowest-scored filter is starred.
    """
    index = np.arange(len(scores))
    fig = go.Figure()
    for name, selected, color, symbol in (("kept", keep, KEPT_COLOR, "circle"), ("pruned", ~keep, PRUNED_COLOR, "x")):
        fig.add_trace(
            go.Scatter(
                x=coords[selected, 0], y=coords[selected, 1], mode="markers", name=name,
                marker=dict(color=color, symbol=symbol, size=7 if len(scores) <= 512 else 4, opacity=0.85),
                customdata=np.stack([index[selected], scores[selected]], axis=1),
                hovertemplate="filter %{customdata[0]:.0f}<br>score %{customdata[1]:.5g}<extra>" + name + "</extra>",
            )
        )
    median = int(np.argmin(scores))
    fig.add_trace(
        go.Scatter(
            x=[coords[median, 0]], y=[coords[median, 1]], mode="markers", name="nearest the geometric median",
            marker=dict(color=MEDIAN_COLOR, symbol="star", size=18, line=dict(color="#333", width=1)),
            hovertemplate=f"filter {median}: smallest score, nearest the geometric median<extra></extra>",
        )
    )
    fig.update_layout(
        height=380, margin=dict(l=10, r=10, t=10, b=40), legend=dict(orientation="h", y=1.1, x=1, xanchor="right"),
        xaxis=dict(title=f"{method} 1", zeroline=False), yaxis=dict(title=f"{method} 2", zeroline=False, scaleanchor=None),
    )
    return fig


def kernel_figure(weight: np.ndarray, keep: np.ndarray, *, columns: int | None = None) -> go.Figure:
    """First-layer kernels (N, C∈{1,3}, kh, kw) as a mosaic of small images, pruned ones framed red.

    Each kernel is min-max scaled on its own (colour for 3 input channels, grey for 1), laid out
    row-major by filter index.
    """
    n, channels, kh, kw = weight.shape
    columns = columns or min(16, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    cell_h, cell_w = kh + 2, kw + 2
    mosaic = np.full((rows * cell_h + 1, columns * cell_w + 1, 3), 255, dtype=np.uint8)
    frame = np.array([int(PRUNED_COLOR[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)
    for i in range(n):
        kernel = weight[i].transpose(1, 2, 0)  # kh, kw, C
        low, high = kernel.min(), kernel.max()
        scaled = (kernel - low) / (high - low) if high > low else np.full_like(kernel, 0.5)
        tile = np.rint(scaled * 255).astype(np.uint8)
        if channels == 1:
            tile = np.repeat(tile, 3, axis=2)
        top, left = (i // columns) * cell_h + 1, (i % columns) * cell_w + 1
        if not keep[i]:
            mosaic[top - 1 : top + kh + 1, left - 1 : left + kw + 1] = frame
        mosaic[top : top + kh, left : left + kw] = tile
    fig = px.imshow(mosaic, binary_string=True)
    fig.update_traces(hovertemplate=None, hoverinfo="skip")
    # An invisible cell per kernel carries the hover: which filter, kept or pruned.
    index = np.arange(rows * columns).reshape(rows, columns)
    status = np.where(index < n, "kept", "")
    status[index < n] = np.where(keep, "kept", "pruned")[index[index < n]]
    fig.add_trace(
        go.Heatmap(
            z=np.zeros((rows, columns)), x=np.arange(columns) * cell_w + cell_w / 2, y=np.arange(rows) * cell_h + cell_h / 2,
            opacity=0.0, showscale=False, customdata=np.stack([index, status], axis=-1),
            hovertemplate="filter %{customdata[0]}: %{customdata[1]}<extra></extra>",
        )
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=max(200, min(520, rows * 52 + 20)), margin=dict(l=0, r=0, t=0, b=14))
    return fig


def sparsity_figure(table: pd.DataFrame) -> go.Figure:
    """Per-layer sparsity bars (layers in model order), coloured by what set them."""
    colors = {"plan": KEPT_COLOR, "override": "#ff7f0e", "kept": "#bbbbbb", "output": "#bbbbbb"}
    fig = go.Figure()
    for rule, color in colors.items():
        part = table[table["rule"] == rule]
        if part.empty:
            continue
        fig.add_trace(
            go.Bar(
                x=list(part.index), y=part["sparsity"], name={"plan": "from the plan", "output": "output layer (kept)"}.get(rule, rule),
                marker_color=color, customdata=np.stack([part["pruned"], part["filters"]], axis=1),
                hovertemplate="%{x}<br>%{customdata[0]} of %{customdata[1]} pruned (%{y:.0%})<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="overlay", height=360, margin=dict(l=10, r=10, t=10, b=10),
        xaxis=dict(type="category", categoryorder="array", categoryarray=list(table.index), tickangle=-60,
                   showticklabels=len(table) <= 80, tickfont=dict(size=9)),
        yaxis=dict(title="filters pruned", tickformat=".0%", range=[0, 1]),
        legend=dict(orientation="h", y=1.1, x=1, xanchor="right"),
    )
    return fig
