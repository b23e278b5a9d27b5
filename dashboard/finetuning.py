"""The session's fine-tuned model: how it is trained (as a background job), kept, shown and exported.

One fine-tuned model per session, in ``st.session_state``, keyed by the model it came from and the
plan it was pruned by: once either changes, :func:`current` releases it (it would describe another
model). Training runs on copies (:func:`fpgm_core.training.fine_tune`), so the cached model is
never touched. The job reports every epoch's metrics, which the page draws as they come
(:func:`history_figure`); the finished result becomes the session's only if the model and plan are
still the ones it was started for.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from fpgm_core import SparsityPlan, model_fingerprint, recipe_json, serialize_tensors
from fpgm_core.criteria import CRITERION_LABELS
from fpgm_core.evaluation import image_transform, model_categories
from fpgm_core.execution import INLINE
from fpgm_core.slim import SlimResult, serialize_model
from fpgm_core.training import (
    FineTuneResult,
    FineTuneSettings,
    TrainingData,
    demo_training_data,
    fine_tune_on,
    finetune_recipe,
    load_training_zip,
    slim_masked,
)

from .cluster import job_executor
from .exports import weights_argument
from . import jobs
from .jobs import Job
from .slimming import plan_key
from .state import ActiveModel

__all__ = [
    "JOB",
    "JobKey",
    "FineTuned",
    "finetune_key",
    "demo_training",
    "zip_training",
    "session_training_data",
    "current",
    "adopt",
    "training_work",
    "history_figure",
    "history_table",
    "sweep_figure",
    "sweep_table",
    "stem",
    "replay_command",
    "checkpoint_bytes",
    "masks_bytes",
    "recipe_bytes",
    "history_bytes",
    "slimmed",
    "slim_bytes",
]

JOB = "finetune"
_SESSION_KEY = "finetuned"
TOP1_COLOR, LOSS_COLOR, BASELINE_COLOR, UNTRAINED_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"


def finetune_key(active: ActiveModel, plan: SparsityPlan) -> tuple:
    """What a fine-tuned model belongs to: the session's model and the plan it was pruned by."""
    return (active.key, plan_key(plan))


@dataclass(frozen=True)
class JobKey:
    """What a fine-tune job was started for: the model and plan (``owner``), the data, the settings."""

    owner: tuple
    data_source: str
    data_key: tuple
    settings: FineTuneSettings


@dataclass
class FineTuned:
    """A finished fine-tune kept for the session, with what it came from; the slim is made on demand."""

    key: tuple
    plan: SparsityPlan
    result: FineTuneResult
    data_source: str
    fingerprint: str
    _slim: SlimResult | None = field(default=None, repr=False)

    @property
    def slimmable(self) -> bool:
        """Whether its masks are group-consistent, so slimming removes exactly its zeroed channels."""
        return self.result.settings.group_consistent


@st.cache_resource(max_entries=1, show_spinner="Loading the digits' training split…")
def demo_training() -> TrainingData:
    """The demo's training split (to train on) and held-out split (to measure on)."""
    return demo_training_data()


@st.cache_resource(max_entries=2, show_spinner="Reading the training images…")
def zip_training(digest: str, model_key, val_fraction: float, split_seed: int, name: str, _loaded, _content: bytes) -> TrainingData:
    """Training and held-out images of an uploaded zip, with the model's transforms; shared by sessions."""
    # Keyed by the model: ONNX graphs and your own models take the transforms of their own input shape.
    transform = image_transform(_loaded.arch, model=_loaded.model, input_shape=tuple(_loaded.input_shape))
    return load_training_zip(_content, transform, categories=model_categories(_loaded.arch, model=_loaded.model),
                             val_fraction=val_fraction, split_seed=split_seed, name=name)


def upload_digest(content: bytes) -> str:
    """The SHA-256 of an upload, its cache key."""
    return hashlib.sha256(content).hexdigest()


def session_training_data(active: ActiveModel) -> tuple[TrainingData | None, tuple | None]:
    """The training data the session chose on the Fine-tune page (the demo's split by default), and its key."""
    session = st.session_state
    kind = session.get("ft_data_kind", "digits" if active.loaded.arch == "demo" else "zip")
    if kind == "digits" and active.loaded.arch == "demo":
        return demo_training(), ("digits", 0)
    upload = session.get("ft_upload")
    if upload is None:
        return None, None
    fraction, split_seed = float(session.get("ft_val_fraction", 0.2)), int(session.get("ft_split_seed", 0))
    data = zip_training(upload["digest"], active.key, fraction, split_seed, upload["name"], active.loaded, upload["content"])
    return data, ("zip", upload["digest"], fraction, split_seed)


def current(active: ActiveModel, plan: SparsityPlan) -> FineTuned | None:
    """The session's fine-tuned model for this model and plan; one for another model or plan is released.

    A fine-tune that finished while the session was on another page is taken over here, so every page
    sees it; one started for another model or plan is dropped, and the Fine-tune page says so.
    """
    session = st.session_state
    finished = jobs.job(JOB)
    if finished is not None and finished.state == "done":
        jobs.finish(JOB)
        if adopt(finished, active, plan) is None:
            session["ft_dropped"] = True
    kept = session.get(_SESSION_KEY)
    if kept is not None and kept.key != finetune_key(active, plan):
        del session[_SESSION_KEY]  # released: nothing else holds it
        return None
    return kept


def adopt(finished: Job, active: ActiveModel, plan: SparsityPlan) -> FineTuned | None:
    """Make a finished job's fine-tune the session's, if it still belongs to this model and plan."""
    started_for: JobKey = finished.key
    if started_for.owner != finetune_key(active, plan):
        return None
    result: FineTuneResult = finished.result
    kept = FineTuned(started_for.owner, plan, result, started_for.data_source, model_fingerprint(result.model))
    st.session_state[_SESSION_KEY] = kept
    return kept


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def training_work(
    active: ActiveModel, plan: SparsityPlan, data: TrainingData, settings: FineTuneSettings, scores: Mapping[str, Tensor] | None
) -> Callable[[Job], FineTuneResult]:
    """The job's work: fine-tune a copy of the session's model, reporting each epoch to the job.

    It runs where the server's long jobs run (:func:`dashboard.cluster.job_executor`): in this
    process, or on the server's Ray cluster (on a worker's CPU), its epochs streamed back as they end.
    """
    settings = settings.validated()
    model = active.model

    def work(job: Job) -> FineTuneResult:
        def progress(epoch: int, metrics: dict[str, Any]) -> None:
            job.add(metrics)
            if epoch:
                job.report(epoch / settings.epochs, f"Epoch {epoch} of {settings.epochs} · loss {metrics['train_loss']:.3f}"
                                                     f" · held-out top-1 {_percent(metrics['top1'])}")
            else:
                job.report(0.0, f"Pruned, before training: held-out top-1 {_percent(metrics['top1'])}")

        def steps(epoch: int, step: int, total: int) -> None:
            _, text, _ = job.snapshot()
            job.report((epoch - 1 + step / total) / settings.epochs, text)

        executor = job_executor()
        # The cluster's workers train on their CPUs (the server's GPU is not theirs).
        device = active.device if executor is INLINE else "cpu"
        if executor is not INLINE:
            job.report(0.0, f"Starting {executor.describe()}…")  # a worker's first start takes seconds
        # fine_tune trains copies: the cached model is never modified.
        return fine_tune_on(executor, model, plan, data, settings, scores=scores, device=device, progress=progress,
                            batch_progress=steps, should_stop=job.should_stop)

    return work


def history_figure(records: list[dict[str, Any]], epochs: int, baseline: float | None = None) -> go.Figure:
    """Held-out top-1 per epoch (fine-tuned) beside the unpruned and the pruned-untrained, and the training loss."""
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    trained = [r for r in records if r["epoch"] > 0]
    untrained = next((r for r in records if r["epoch"] == 0), None)
    baseline = baseline if baseline is not None else next((r.get("baseline_top1") for r in records), None)
    measure = "top1" if all(r.get("top1") is not None for r in records) else "agreement"
    label = "held-out top-1" if measure == "top1" else "agreement with the unpruned model"
    if trained:
        figure.add_trace(go.Bar(x=[r["epoch"] for r in trained], y=[r["train_loss"] for r in trained], name="training loss",
                                marker_color=LOSS_COLOR, opacity=0.35, hovertemplate="epoch %{x}<br>loss %{y:.3f}<extra></extra>"),
                         secondary_y=False)
    figure.add_trace(go.Scatter(
        x=[0] + [r["epoch"] for r in trained], y=[untrained[measure] if untrained else None] + [r[measure] for r in trained],
        mode="lines+markers", name=f"fine-tuned ({label})", line=dict(color=TOP1_COLOR, width=3),
        hovertemplate="epoch %{x}<br>%{y:.1%}<extra>fine-tuned</extra>",
    ), secondary_y=True)
    if baseline is not None and measure == "top1":
        figure.add_trace(go.Scatter(x=[0, epochs], y=[baseline, baseline], mode="lines", name="unpruned",
                                    line=dict(color=BASELINE_COLOR, dash="dot", width=2),
                                    hovertemplate="unpruned %{y:.1%}<extra></extra>"), secondary_y=True)
    if untrained is not None:
        figure.add_trace(go.Scatter(x=[0, epochs], y=[untrained[measure]] * 2, mode="lines", name="pruned, not trained",
                                    line=dict(color=UNTRAINED_COLOR, dash="dash", width=2),
                                    hovertemplate="pruned, not trained %{y:.1%}<extra></extra>"), secondary_y=True)
    figure.update_layout(height=380, margin=dict(l=75, r=10, t=30, b=40), legend=dict(orientation="h", y=1.14, x=0),
                         bargap=0.5, xaxis=dict(title="epoch", range=[-0.3, epochs + 0.3], dtick=1 if epochs <= 20 else None))
    # The accuracy lines sit on the second axis, which plotly draws over the first: the loss bars stay behind them.
    figure.update_yaxes(title_text=label, tickformat=".0%", range=[0, 1.03], dtick=0.2, tick0=0, showgrid=True, side="left",
                        secondary_y=True)
    figure.update_yaxes(title_text="training loss", rangemode="tozero", showgrid=False, tickformat=".2f", side="right",
                        secondary_y=False)
    return figure


def history_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per epoch: training loss, held-out top-1, agreement, KL, learning rate, masks changed, seconds."""
    rows = [{"epoch": r["epoch"], "training loss": r["train_loss"], "held-out top-1": r["top1"], "agreement": r["agreement"],
             "KL": r["kl"], "learning rate": r["lr"], "masks changed": r["masks_changed"], "seconds": r["seconds"]}
            for r in records]
    return pd.DataFrame(rows).set_index("epoch")


def sweep_figure(rows: list[dict[str, Any]], colors: Mapping[str, str]) -> go.Figure:
    """Per criterion, top-1 after fine-tuning (solid, seeds' range shaded) and right after pruning (dotted) by sparsity."""
    figure = go.Figure()
    for criterion in dict.fromkeys(row["criterion"] for row in rows):
        part = sorted((row for row in rows if row["criterion"] == criterion), key=lambda row: row["sparsity"])
        color = colors.get(criterion, "#444")
        x = [row["sparsity"] for row in part]
        name = CRITERION_LABELS.get(criterion, criterion)
        if part[0]["runs"] > 1 and part[0]["top1_min"] is not None:
            figure.add_trace(go.Scatter(x=x + x[::-1], y=[row["top1_max"] for row in part] + [row["top1_min"] for row in part][::-1],
                                        fill="toself", fillcolor=color, opacity=0.18, line=dict(width=0), hoverinfo="skip",
                                        showlegend=False))
        figure.add_trace(go.Scatter(x=x, y=[row["top1"] for row in part], mode="lines+markers", name=f"{name}, fine-tuned",
                                    line=dict(color=color, width=3),
                                    hovertemplate="sparsity %{x:.0%}<br>fine-tuned %{y:.1%}<extra>" + name + "</extra>"))
        figure.add_trace(go.Scatter(x=x, y=[row["pruned_top1"] for row in part], mode="lines+markers", name=f"{name}, not trained",
                                    line=dict(color=color, width=1.5, dash="dot"), marker=dict(symbol="circle-open"),
                                    hovertemplate="sparsity %{x:.0%}<br>right after pruning %{y:.1%}<extra>" + name + "</extra>"))
    baseline = next((row["baseline_top1"] for row in rows if row["baseline_top1"] is not None), None)
    if baseline is not None:
        figure.add_hline(y=baseline, line_dash="dot", line_color="#444", annotation_text="unpruned", annotation_position="top right")
    figure.update_layout(height=440, margin=dict(l=10, r=10, t=30, b=40), legend=dict(orientation="h", y=1.2, x=0),
                         xaxis=dict(title="sparsity (filters pruned per layer)", tickformat=".0%",
                                    tickvals=sorted({row["sparsity"] for row in rows})),
                         yaxis=dict(title="held-out top-1", tickformat=".0%", range=[0, 1.03]))
    return figure


def sweep_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The paper-style table: per criterion and sparsity, top-1 before and after fine-tuning, the drop, the FLOPs cut."""
    def pm(mean, std):
        return "—" if mean is None else f"{100 * mean:.1f} ± {100 * std:.1f}"

    return pd.DataFrame([
        {"criterion": CRITERION_LABELS.get(row["criterion"], row["criterion"]), "sparsity": f"{row['sparsity']:.0%}",
         "unpruned": _percent(row["baseline_top1"]), "pruned": pm(row["pruned_top1"], row["pruned_top1_std"]),
         "fine-tuned": pm(row["top1"], row["top1_std"]), "drop (points)": pm(row["drop"], row["drop_std"]),
         "FLOPs cut": f"{row['flops_removed']:.1%}", "runs": row["runs"]}
        for row in rows
    ])


def stem(active: ActiveModel) -> str:
    """Base name of the fine-tuned exports, e.g. ``demo-fpgm-finetuned``."""
    return f"{active.loaded.arch}-fpgm-finetuned"


def replay_command(kept: FineTuned, active: ActiveModel) -> str:
    """The headless command that replays this fine-tune from its recipe."""
    data = "demo" if kept.result.data.get("kind") == "demo" else kept.result.data.get("name", "IMAGES.zip")
    name = stem(active)
    return (
        f"python -m fpgm_core finetune --arch {active.loaded.arch} --weights {weights_argument(active.loaded, active.source)} "
        f"--recipe {name}.recipe.json --data {data} --out {name}.safetensors"
    )


def checkpoint_bytes(kept: FineTuned, fmt: str) -> bytes:
    """The fine-tuned state_dict (pruned filters exactly zero) as ``.safetensors`` or ``.pt`` bytes."""
    return serialize_tensors(kept.result.model.state_dict(), fmt)


def masks_bytes(kept: FineTuned, fmt: str) -> bytes:
    """The fine-tuned model's final keep-masks (layer → bool, True = kept)."""
    return serialize_tensors({name: keep.to(torch.bool) for name, keep in kept.result.masks.items()}, fmt)


def recipe_bytes(kept: FineTuned, active: ActiveModel, masks_file: str) -> bytes:
    """The recipe of the fine-tune: the plan's counts and every setting, so ``finetune --recipe`` replays it."""
    recipe = finetune_recipe(active.model, kept.plan, kept.result, arch=active.loaded.arch,
                             weights=weights_argument(active.loaded, active.source), masks_file=masks_file)
    return recipe_json(recipe).encode()


def history_bytes(kept: FineTuned) -> bytes:
    """The per-epoch history and settings as JSON."""
    return (json.dumps(kept.result.to_dict(), indent=2, allow_nan=False, default=_json_number) + "\n").encode()


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON-ready")


def slimmed(kept: FineTuned, input_shape: tuple[int, ...]) -> SlimResult:
    """The fine-tuned model slimmed to exactly its zeroed channels (made once, kept with it)."""
    if kept._slim is None:
        model = kept.result.model
        if any(p.device.type != "cpu" for p in model.parameters()):
            model = copy.deepcopy(model).cpu()
        kept._slim = slim_masked(model, kept.result.masks, input_shape=input_shape)
    return kept._slim


def slim_bytes(kept: FineTuned, fmt: str, input_shape: tuple[int, ...]) -> bytes:
    """The slimmed fine-tuned model as ``.pt2``, ``.onnx`` or ``.pt`` bytes, round-trip checked."""
    return serialize_model(slimmed(kept, input_shape).model, fmt, input_shape=input_shape, check=True).data
