"""Dependency groups: which layers share output channels, and which channels a plan removes from each.

A residual add, a depthwise conv or a concatenation ties channels of several layers together:
removing channel 7 of ``layer1.0.conv2`` also removes channel 7 of every layer added to it, and
input channel 7 of every layer that reads the sum. Torch-Pruning's ``DependencyGraph`` finds these
groups by tracing the model; this module scores them with OUR FPGM distances and decides, per
group, which channels go.

How a group's layers are combined (:class:`FPGMGroupImportance`): each conv/linear whose output
channels the group removes is scored with :func:`fpgm_core.fpgm_scores` over its own filters
(the plan's metric); the scores are divided by that layer's mean score, so wide and narrow,
shallow and deep layers weigh the same (as the plan's global mode does); the group's score of a
channel is the mean of its layers' normalised scores. The lowest-scored channels are removed.

How many (:func:`select_group_channels`): the mean of the plan's fractions ``pruned / filters``
over the group's layers, times the group's channels, rounded as FPGMPruner rounds. A uniform plan
gives every coupled layer the same fraction, so a group prunes exactly the plan's count. Grouped
convolutions remove the same number of channels from every channel group, so their count is a
multiple of the number of groups; at least one channel per channel group is always kept.

Group-consistent masks (:func:`group_masks`) mark, for every layer whose outputs a group removes,
exactly those channels: ``apply_masks(model, group_masks(...))`` computes the same function as the
slimmed model. Where masking cannot reproduce the removal, the group is *blocked* and kept whole,
naming the layer that blocks it: a LayerNorm or GroupNorm over the channels (removing some changes
the statistics of the rest), a BatchNorm that does not directly follow a pruned layer (after a
concatenation, as in DenseNet, a zeroed channel comes out of it as its bias), or any layer found,
on a forward pass, to receive non-zero values in channels the group removes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .bounded import TimeLimitExceeded, run_bounded
from .errors import FpgmError
from .layers import PRUNABLE_TYPES, is_depthwise, output_layer_names, output_width, prunable_layers
from .masking import apply_masks, following_norms
from .masks import prune_count
from .plan import SparsityPlan, layer_scores, plan_counts
from .tracing import MODEL_LOCK, copy_model

__all__ = [
    "ANALYSIS_TIME_LIMIT_S",
    "GroupError",
    "ChannelGroup",
    "AttentionHeads",
    "attention_heads",
    "GroupSelection",
    "FPGMGroupImportance",
    "analyse_groups",
    "dependency_groups",
    "select_group_channels",
    "group_masks",
]

_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_BATCHNORMS = (nn.modules.batchnorm._BatchNorm,)
# Longest wait for Torch-Pruning's analysis (build + group search); resnet50 needs ~2 s on a busy 2-core machine.
ANALYSIS_TIME_LIMIT_S = 120.0
# Torch-Pruning's operations that remove output channels of a conv or linear: the filters FPGM scores.
_SPLITTING_OPS = (tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.UNBIND)
_FILTER_REMOVALS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels, tp.prune_linear_out_channels)


class GroupError(FpgmError):
    """The dependency graph of a model could not be built or used."""


@dataclass(frozen=True)
class ChannelGroup:
    """Layers whose channels are removed together.

    ``layers`` lose output channels, ``consumers`` lose input channels, ``norms`` lose features;
    ``blocked_by`` names the layer that keeps the group whole, with ``reason``, or is None.
    ``heads`` > 1 marks a multi-head attention group: its channels (the output projection's inputs,
    ``heads`` contiguous blocks) are removed a whole head at a time.
    """

    index: int
    root: str
    layers: tuple[str, ...]
    consumers: tuple[str, ...]
    norms: tuple[str, ...]
    channels: int
    channel_groups: int = 1
    blocked_by: str | None = None
    reason: str | None = None
    heads: int = 1

    @property
    def coupled(self) -> bool:
        """True when more than one layer loses the same output channels."""
        return len(self.layers) > 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the record."""
        return {**asdict(self), "layers": list(self.layers), "consumers": list(self.consumers), "norms": list(self.norms), "coupled": self.coupled}


@dataclass
class GroupAnalysis:
    """A private copy of a model with its dependency graph and groups (full channel lists)."""

    model: nn.Module
    graph: Any
    groups: list[ChannelGroup]
    tp_groups: list[Any]
    names: dict[Any, str]
    input_shape: tuple[int, ...]
    heads: dict[str, AttentionHeads] = field(default_factory=dict)

    def pruning_group(self, index: int, root_idxs: list[int]) -> Any:
        """Torch-Pruning's group removing ``root_idxs`` (root numbering) of group ``index``, as the graph is now."""
        full = self.tp_groups[index]
        return self.graph.get_pruning_group(full[0].dep.target.module, full[0].dep.handler, root_idxs)


def _is_out_fn(graph: Any, fn: Any) -> bool:
    return graph.is_out_channel_pruning_fn(fn)


def _channel_groups(group: Any) -> int:
    """Channel groups of a tp group: a grouped (not depthwise) conv or a GroupNorm splits channels."""
    found = 1
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.out_channels:
            found = max(found, module.groups)
        elif isinstance(module, nn.GroupNorm):
            found = max(found, module.num_groups)
    return found


@dataclass(frozen=True)
class AttentionHeads:
    """A multi-head attention module as timm and many others write it: a fused ``qkv`` Linear and a ``proj``.

    Its qkv output reshapes to (3, ``num_heads``, ``head_dim``), so a slim can only remove whole
    heads: the same rows of q, k and v, and the matching columns of ``proj``. ``blocked_reason`` is
    set where the module also holds per-head parameters (relative position biases) that a slim
    would have to cut too.
    """

    module: str
    qkv: str
    proj: str
    num_heads: int
    head_dim: int
    blocked_reason: str | None = None


def attention_heads(model: nn.Module) -> dict[str, AttentionHeads]:
    """The model's attention modules keyed by their qkv layer's name (what Torch-Pruning's ``num_heads`` names)."""
    found = {}
    for name, module in model.named_modules():
        heads, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
        qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
        if not (isinstance(heads, int) and isinstance(head_dim, int) and isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
            continue
        if qkv.out_features != 3 * heads * head_dim or proj.in_features != heads * head_dim or heads < 2:
            continue
        prefix = f"{name}." if name else ""
        per_head = [
            pname for pname, p in module.named_parameters()
            if not pname.startswith(("qkv.", "proj.")) and heads in p.shape
        ]
        reason = None
        if per_head:
            reason = (f"attention holds per-head parameters ({prefix}{per_head[0]}) besides qkv and proj; "
                      "removing heads would have to cut them too, which is not done")
        found[f"{prefix}qkv"] = AttentionHeads(name, f"{prefix}qkv", f"{prefix}proj", heads, head_dim, reason)
    return found


def _attention_of(group: Any, names: Mapping[Any, str], heads: Mapping[str, AttentionHeads], graph: Any) -> AttentionHeads | None:
    for item in group:
        name = names.get(item.dep.target.module) if isinstance(item.dep.target.module, nn.Module) else None
        if name in heads and graph.is_out_channel_pruning_fn(item.dep.handler):
            return heads[name]
    return None


def _fixed_split(group: Any, names: Mapping[Any, str]) -> tuple[str, str] | None:
    """(layer, reason) if the group's channels pass a split or unbind whose sizes the model's code fixes."""
    for item in group:
        for node in (item.dep.source, item.dep.target):
            if node.type in _SPLITTING_OPS:
                layer, operation, _ = _node_location(node, names)
                return layer or operation, (
                    f"the {operation} operation after it splits these channels at sizes fixed in the model's code "
                    "(torch.split, chunk or unbind): removing some would misalign or break the split"
                )
    return None


def _record(
    index: int, group: Any, graph: Any, names: Mapping[Any, str], followers: Mapping[str, tuple[str, ...]],
    attention: "AttentionHeads | None" = None,
) -> ChannelGroup:
    layers, consumers, norms = [], [], {}
    blocked_by, reason = None, None
    split = _fixed_split(group, names)
    if attention is not None and attention.blocked_reason is not None:
        blocked_by, reason = attention.qkv, attention.blocked_reason
    elif split is not None and attention is None:
        blocked_by, reason = split
    for item in group:
        module, fn = item.dep.target.module, item.dep.handler
        name = names.get(module) if isinstance(module, nn.Module) else None
        if isinstance(module, nn.Parameter):
            blocked_by = blocked_by or graph._param_to_name.get(module, "a parameter")
            reason = reason or "a bare nn.Parameter uses these channels, which a layer mask cannot zero"
            continue
        if name is None:
            continue  # Torch-Pruning's stand-ins for adds, concatenations and reshapes
        if isinstance(module, PRUNABLE_TYPES):
            target = layers if _is_out_fn(graph, fn) else consumers
            if name not in target:
                target.append(name)
        elif isinstance(module, _CHANNEL_NORMS):
            norms[name] = module
            if blocked_by is None:
                blocked_by = name
                reason = f"{type(module).__name__} normalises over the channels: removing some changes the statistics of the rest, which masking cannot reproduce"
        elif isinstance(module, _BATCHNORMS):
            norms[name] = module
        elif blocked_by is None and any(p.numel() for p in module.parameters(recurse=False)):
            blocked_by = name
            reason = f"{type(module).__name__} has per-channel parameters that a layer mask cannot zero"
    for norm, module in norms.items():
        if isinstance(module, _BATCHNORMS) and blocked_by is None and not any(norm in followers.get(layer, ()) for layer in layers):
            blocked_by = norm
            reason = (
                "BatchNorm normalises channels that no pruned layer feeds directly (after a concatenation "
                "or addition): a zeroed channel would leave it as its bias, so masking cannot match slimming"
            )
    root = names[group[0].dep.target.module]
    return ChannelGroup(
        index=index,
        root=root,
        layers=tuple(layers),
        consumers=tuple(c for c in consumers if c not in layers),
        norms=tuple(norms),
        channels=len(group[0].idxs),
        channel_groups=_channel_groups(group),
        blocked_by=blocked_by,
        reason=reason,
        heads=attention.num_heads if attention is not None else 1,
    )


def _probe_indices(record: ChannelGroup) -> list[int]:
    """One channel per channel group: enough to see whether masking reproduces the removal."""
    size = record.channels // record.channel_groups
    return [g * size for g in range(record.channel_groups)]


def _check_by_forward(analysis: GroupAnalysis) -> None:
    """Block groups whose removed channels reach a consumer non-zero in the group-masked model.

    Every open group loses one probe channel per channel group; the masked copy is run once on
    random input and each consumer's input is checked for exact zeros in the removed positions.
    """
    open_groups = [i for i, g in enumerate(analysis.groups) if g.blocked_by is None]
    if not open_groups:
        return
    masks: dict[str, Tensor] = {}
    expected: list[tuple[int, str, list[int]]] = []
    for i in open_groups:
        pruning = analysis.pruning_group(i, _probe_indices(analysis.groups[i]))
        for item in pruning:
            module, fn = item.dep.target.module, item.dep.handler
            name = analysis.names.get(module) if isinstance(module, nn.Module) else None
            if name is None or not isinstance(module, PRUNABLE_TYPES):
                continue
            if name in analysis.groups[i].layers:
                keep = masks.setdefault(name, torch.ones(output_width(module), dtype=torch.bool))
                keep[list(item.idxs)] = False
            if not _is_out_fn(analysis.graph, fn) or is_depthwise(module):
                expected.append((i, name, list(item.idxs)))
    masked = apply_masks(analysis.model, masks)
    modules = dict(masked.named_modules())
    nonzero: dict[int, str] = {}

    def hook_for(group_index: int, name: str, idxs: list[int]):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            x = inputs[0]
            dim = -1 if isinstance(module, nn.Linear) else 1
            if bool(x.index_select(dim, torch.tensor(idxs)).ne(0).any()):
                nonzero.setdefault(group_index, name)
        return hook

    hooks = [modules[name].register_forward_hook(hook_for(i, name, idxs)) for i, name, idxs in expected]
    try:
        with MODEL_LOCK.shared(), torch.no_grad():
            masked(torch.randn(analysis.input_shape, generator=torch.Generator().manual_seed(0)))
    finally:
        for handle in hooks:
            handle.remove()
    for i, name in nonzero.items():
        analysis.groups[i] = replace(
            analysis.groups[i],
            blocked_by=name,
            reason="receives non-zero values in the channels this group removes when the group is masked, so masking cannot match slimming",
        )


def _node_of(frame: Any) -> Any:
    # A function's arguments come first among its locals: the node it was called for.
    return next((v for v in frame.f_locals.values() if isinstance(v, tp.dependency.Node)), None)


def _node_location(node: Any, names: Mapping[Any, str]) -> tuple[str | None, str, bool]:
    """(nearest layer at or before a Torch-Pruning graph node, the node's operation, whether it is that layer)."""
    operation = type(node.grad_fn).__name__ if node.grad_fn is not None else type(node.module).__name__
    queue, seen = [node], set()
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        name = names.get(current.module) if isinstance(current.module, nn.Module) else None
        if name:
            return name, operation, current is node
        queue.extend(current.inputs)
    return None, operation, False


def _describe_node(node: Any, names: Mapping[Any, str]) -> str:
    """A Torch-Pruning graph node as the user can find it: the layer, or an operation after a layer."""
    layer, operation, itself = _node_location(node, names)
    if layer is None:
        return f"a {operation} operation"
    return f"layer {layer} ({operation})" if itself else f"the {operation} operation after layer {layer}"


def _failing_operation(exc: BaseException, names: Mapping[Any, str]) -> str | None:
    """Name the operation Torch-Pruning failed on and the nearest layer before it, from the traceback.

    Tracing errors carry no layer name; the graph node being processed is a local of the failing
    frame, and its nearest upstream named module tells the user where in the model to look.
    """
    frame_node = None
    tb = exc.__traceback__
    while tb is not None:
        frame_node = _node_of(tb.tb_frame) or frame_node
        tb = tb.tb_next
    return f"blocked at {_describe_node(frame_node, names)}" if frame_node is not None else None


def _where_running(frame: Any, names: Mapping[Any, str]) -> str | None:
    """Where an over-running analysis was: the innermost graph node among its frames' locals."""
    while frame is not None:
        node = _node_of(frame)
        if node is not None:
            return f"it was at {_describe_node(node, names)}"
        frame = frame.f_back
    return None


class _DependencyGraph(tp.DependencyGraph):
    """Torch-Pruning's graph, whose tracing forward pass holds the model lock shared like every forward pass."""

    def _trace(self, *args: Any, **kwargs: Any) -> Any:
        with MODEL_LOCK.shared():
            return super()._trace(*args, **kwargs)


def _build_graph(work: nn.Module, example: Tensor, ignored: list[nn.Module]) -> tuple[Any, list[Any]]:
    """Torch-Pruning's dependency graph of ``work`` and all its groups (run in a bounded worker thread).

    Only the tracing forward pass holds the model lock (shared); the group search, which can run
    over its time, holds nothing.
    """
    with torch.enable_grad():  # grad mode is per thread
        graph = _DependencyGraph().build_dependency(work, example_inputs=example, verbose=False)
        groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.modules.conv._ConvNd, nn.Linear]))
    return graph, groups


def analyse_groups(
    model: nn.Module, input_shape: tuple[int, ...], *, check: bool = True, time_limit_s: float | None = None
) -> GroupAnalysis:
    """Trace a COPY of ``model`` with Torch-Pruning and list its groups; the model is left untouched.

    Groups that would remove channels of the model's output layers are left out (their outputs are
    the classes). With ``check``, groups whose removal masking cannot reproduce are marked blocked.
    Torch-Pruning's analysis runs in a worker thread for at most ``time_limit_s`` seconds (default
    :data:`ANALYSIS_TIME_LIMIT_S`) and holds no lock meanwhile. Raises GroupError when the model
    cannot be traced, with Torch-Pruning's reason, or when the analysis runs over its time.
    """
    limit = ANALYSIS_TIME_LIMIT_S if time_limit_s is None else float(time_limit_s)
    work = copy_model(model).eval()
    # Torch-Pruning follows autograd: a frozen model (requires_grad=False, as the dashboard caches
    # its models) would trace to no groups at all. The copy is private, so unfreeze it.
    for parameter in work.parameters():
        parameter.requires_grad_(True)
    names = {module: name for name, module in work.named_modules()}
    modules = dict(work.named_modules())
    # fx traces (which hold the model lock) happen here, before the bounded work starts.
    ignored = [modules[name] for name in output_layer_names(work)]
    followers = following_norms(work)
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    try:
        graph, tp_groups = run_bounded(
            lambda: _build_graph(work, example, ignored), limit,
            describe=lambda frame: _where_running(frame, names), name="fpgm-torch-pruning-analysis",
        )
    except TimeLimitExceeded as exc:
        still = "" if exc.stopped else " (its worker thread is still finishing a long computation on a private copy)"
        raise GroupError(
            f"Torch-Pruning's dependency analysis did not finish within {exc.seconds:g} s"
            f"{' (' + exc.where + ')' if exc.where else ''}, so this model cannot be slimmed{still}; "
            "its masked export still works"
        ) from None
    except FpgmError:
        raise
    except Exception as exc:  # tracing raises whatever the model's forward or tp raises
        where = _failing_operation(exc, names)
        raise GroupError(
            f"Torch-Pruning cannot slim this model: {where + ' ' if where else ''}"
            f"({type(exc).__name__}: {str(exc)[:160]}); its masked export still works"
        ) from exc
    heads = attention_heads(work)
    records = []
    for i, group in enumerate(tp_groups):
        attention = _attention_of(group, names, heads, graph) if heads else None
        if attention is not None and attention.blocked_reason is None:
            # Rooted at proj's inputs, one channel per (head, dim): Torch-Pruning maps each to the
            # same row of q, k and v (as its MetaPruner does for num_heads).
            proj = modules[attention.proj]
            group = tp_groups[i] = graph.get_pruning_group(proj, tp.prune_linear_in_channels, list(range(proj.in_features)))
        records.append(_record(i, group, graph, names, followers, attention))
    analysis = GroupAnalysis(work, graph, records, tp_groups, names, tuple(input_shape), heads)
    if check:
        _check_by_forward(analysis)
    return analysis


def dependency_groups(model: nn.Module, input_shape: tuple[int, ...]) -> list[ChannelGroup]:
    """The model's dependency groups, for display: which layers move together and which are blocked."""
    return analyse_groups(model, input_shape).groups


class FPGMGroupImportance(tp.importance.Importance):
    """Per-channel FPGM importance of a Torch-Pruning group (a ``tp.importance.Importance``).

    For each conv/linear whose output channels the group removes, that layer's FPGM scores (its
    summed filter distances, from :func:`fpgm_core.fpgm_scores` over all its filters) are divided
    by the layer's mean score and placed at the group's channel positions; the group score of a
    channel is the mean over those layers. Smaller = nearer the geometric median = removed first.

    Args:
        scores: layer name → FPGM scores of all its filters (e.g. from :func:`layer_scores`).
        names: module → name in the model the group was traced from.
    """

    def __init__(self, scores: Mapping[str, Tensor], names: Mapping[Any, str]) -> None:
        self.scores = scores
        self.names = names

    def __call__(self, group: Any) -> Tensor:
        """One float64 score per channel of the group's root (in the root's channel order)."""
        width = len(group[0].idxs)
        total = torch.zeros(width, dtype=torch.float64)
        seen = torch.zeros(width, dtype=torch.float64)
        for item in group:
            module = item.dep.target.module
            name = self.names.get(module) if isinstance(module, nn.Module) else None
            if name is None or name not in self.scores or item.dep.handler not in _FILTER_REMOVALS:
                continue
            root_idxs = item.root_idxs
            if root_idxs is None or any(r is None for r in root_idxs):
                continue
            layer_score = self.scores[name].to(torch.float64)
            mean = layer_score.mean()
            normalised = layer_score / mean if mean > 0 else torch.zeros_like(layer_score)
            position = torch.as_tensor(list(root_idxs), dtype=torch.long)
            total.index_add_(0, position, normalised[list(item.idxs)])
            seen.index_add_(0, position, torch.ones(len(position), dtype=torch.float64))
        return total / seen.clamp(min=1)


@dataclass
class GroupSelection:
    """What a plan removes, group by group, on the analysed copy of a model.

    ``pruned[i]`` lists the removed channels of group ``i`` in its root layer's numbering;
    ``masks`` are the group-consistent keep-masks (True = kept) of every layer that loses outputs.
    """

    analysis: GroupAnalysis
    pruned: dict[int, list[int]]
    planned_fraction: dict[int, float]
    masks: dict[str, Tensor] = field(default_factory=dict)

    @property
    def groups(self) -> list[ChannelGroup]:
        """The analysed groups, blocked ones included."""
        return self.analysis.groups

    def group_rows(self) -> list[dict[str, Any]]:
        """One JSON-ready row per group: its layers, channels and what the plan removes from it."""
        rows = []
        for record in self.analysis.groups:
            removed = len(self.pruned.get(record.index, []))
            rows.append(
                {
                    **record.to_dict(),
                    "planned_fraction": round(self.planned_fraction.get(record.index, 0.0), 6),
                    "pruned": removed,
                    "kept": record.channels - removed,
                }
            )
        return rows


def select_group_channels(
    model: nn.Module,
    plan: SparsityPlan,
    *,
    input_shape: tuple[int, ...],
    scores: Mapping[str, Tensor] | None = None,
    device: str | torch.device | None = None,
    time_limit_s: float | None = None,
) -> GroupSelection:
    """Resolve ``plan`` to the channels each dependency group of ``model`` loses.

    Args:
        model: left untouched; a copy is traced.
        plan: the sparsity plan (uniform, global, overrides or recipe counts).
        input_shape: an input the model accepts, e.g. ``(1, 3, 224, 224)``.
        scores: FPGM scores per layer (same metric) to reuse; missing layers are scored here.
        device: where FPGM distances are computed.
        time_limit_s: longest wait for Torch-Pruning's analysis (default :data:`ANALYSIS_TIME_LIMIT_S`).
    """
    plan = plan.validated()
    analysis = analyse_groups(model, input_shape, time_limit_s=time_limit_s)
    layers = prunable_layers(analysis.model)
    filters = {layer.name: layer.filters for layer in layers}
    known = dict(scores or {})
    if plan.mode == "global" and plan.counts is None:
        missing = [layer.name for layer in layers if layer.name not in known]
        known.update(layer_scores(analysis.model, plan.metric, device=device, names=missing))
    counts = plan_counts(layers, plan, known)
    pruned: dict[int, list[int]] = {}
    fractions: dict[int, float] = {}
    wanted: dict[int, int] = {}
    for record in analysis.groups:
        if not record.layers:
            continue
        fraction = sum(counts.get(name, 0) / filters[name] for name in record.layers) / len(record.layers)
        fractions[record.index] = fraction
        size = record.heads if record.heads > 1 else record.channels // record.channel_groups
        per_group = min(prune_count(fraction, size), size - 1)
        if record.blocked_by is None and per_group > 0:
            wanted[record.index] = per_group
    needed = sorted({name for i in wanted for name in analysis.groups[i].layers} - set(known))
    if needed:
        known.update(layer_scores(analysis.model, plan.metric, device=device, names=needed))
    importance = FPGMGroupImportance(known, analysis.names)
    for index, per_group in wanted.items():
        record = analysis.groups[index]
        channel_score = importance(analysis.tp_groups[index])
        if record.heads > 1:
            # Whole heads go: a head's score is the mean of its channels' scores.
            head_size = record.channels // record.heads
            order = torch.argsort(channel_score.view(record.heads, head_size).mean(dim=1), stable=True)[:per_group]
            pruned[index] = sorted(int(h) * head_size + j for h in order for j in range(head_size))
            continue
        size = record.channels // record.channel_groups
        # Grouped convs keep equal channel groups: the same positions go in every group, chosen
        # by the score averaged over groups (as Torch-Pruning's pruners do).
        per_position = channel_score.view(record.channel_groups, size).mean(dim=0)
        order = torch.argsort(per_position, stable=True)[:per_group]
        chosen = sorted(int(p) + g * size for g in range(record.channel_groups) for p in order)
        pruned[index] = chosen
    selection = GroupSelection(analysis, pruned, fractions)
    selection.masks = _masks_of(selection)
    return selection


def _masks_of(selection: GroupSelection) -> dict[str, Tensor]:
    analysis = selection.analysis
    masks: dict[str, Tensor] = {}
    for index, root_idxs in selection.pruned.items():
        record = analysis.groups[index]
        for item in analysis.pruning_group(index, root_idxs):
            module = item.dep.target.module
            name = analysis.names.get(module) if isinstance(module, nn.Module) else None
            if name in record.layers:
                keep = masks.setdefault(name, torch.ones(output_width(module), dtype=torch.bool))
                keep[list(item.idxs)] = False
    return masks


def group_masks(
    model: nn.Module,
    plan: SparsityPlan,
    *,
    input_shape: tuple[int, ...],
    scores: Mapping[str, Tensor] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """Group-consistent keep-masks: ``apply_masks(model, group_masks(...))`` equals the slimmed model.

    Only layers that lose channels appear. Raises PlanError for a bad plan and GroupError for a
    model Torch-Pruning cannot trace.
    """
    return select_group_channels(model, plan, input_shape=input_shape, scores=scores, device=device).masks
