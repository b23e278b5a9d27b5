"""Physically smaller models: remove the channels a plan prunes, check the result, measure it, export it.

A masked checkpoint keeps every zero. Slimming removes them: Torch-Pruning's dependency graph does
the surgery (a removed output channel also leaves every layer that reads it), our FPGM scores pick
the channels, group by group (:mod:`fpgm_core.groups`). Every slim is checked, not trusted:

* its outputs equal those of the group-consistently masked model (``apply_masks`` with
  :func:`fpgm_core.groups.group_masks`) on random input, within a stated tolerance;
* its parameter and FLOP counts equal the counts predicted from the groups before any surgery;
* parameters, FLOPs, checkpoint size and CPU latency (median of repeated runs) are measured on
  the model before and after, never estimated.

Exports: ``.pt2`` (``torch.export``: loads with ``torch.export.load`` without unpickling code),
``.onnx`` (checked in onnxruntime), and ``.pt`` (the whole module pickled: loading needs
``torch.load(..., weights_only=False)``, which runs code from the file — only for trusted files).
"""

from __future__ import annotations

import contextlib
import io
import linecache
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from .counting import count_parameters, layer_flops
from .errors import ExportError, FpgmError
from .export import write_atomically
from .groups import GroupError, GroupSelection, select_group_channels
from .layers import PRUNABLE_TYPES, is_depthwise, output_width
from .masking import apply_masks
from .plan import SparsityPlan
from .tracing import MODEL_LOCK, copy_model, holding_model_lock

__all__ = [
    "SLIM_FORMATS",
    "PT_PICKLE_NOTE",
    "SlimError",
    "Verification",
    "SlimResult",
    "ModelFile",
    "slim_model",
    "measure_latency",
    "serialize_model",
    "export_slimmed",
    "slim_format",
]

SLIM_FORMATS: tuple[str, ...] = (".pt2", ".onnx", ".pt")
PT_PICKLE_NOTE = (
    "a .pt file holds the whole pickled module: loading it needs torch.load(path, weights_only=False), "
    "which runs code stored in the file, so load only files you trust; .pt2 and .onnx load without that"
)
# Output agreement is judged relative to the output's largest magnitude: float32 sums over fewer
# channels round differently, by about 1e-7 of the magnitude per layer. Relative, not absolute,
# because randomly initialised deep models can output values near 1e-15, where any absolute
# tolerance would pass anything.
_RELATIVE_TOLERANCE = 1e-4
_VERIFY_BATCH = 2


class SlimError(FpgmError):
    """A model could not be slimmed, or the slimmed model failed its check; the message says where."""


@dataclass(frozen=True)
class Verification:
    """Slimmed against group-masked outputs, and measured against predicted counts."""

    max_abs_diff: float
    tolerance: float
    outputs_match: bool
    params_predicted: int
    flops_predicted: int
    counts_match: bool

    @property
    def passed(self) -> bool:
        """Both checks hold."""
        return self.outputs_match and self.counts_match

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "outputs_match": self.outputs_match,
            "params_predicted": self.params_predicted,
            "flops_predicted": self.flops_predicted,
            "counts_match": self.counts_match,
            "passed": self.passed,
        }


@dataclass
class SlimResult:
    """A slimmed model with what was removed and what was measured.

    ``masks`` are the group-consistent masks: ``apply_masks(original, masks)`` computes the same
    function as ``model``. ``latency_ms`` maps "before"/"after" to {batch size: median ms}.
    """

    model: nn.Module
    masks: dict[str, Tensor]
    groups: list[dict[str, Any]]
    input_shape: tuple[int, ...]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    state_dict_bytes_before: int
    state_dict_bytes_after: int
    verification: Verification | None
    latency_ms: dict[str, dict[int, float]] = field(default_factory=dict)
    threads: int | None = None

    @property
    def blocked(self) -> list[dict[str, Any]]:
        """Groups the plan would prune but that are kept whole, with the layer that blocks each."""
        return [g for g in self.groups if g["blocked_by"] is not None and g["planned_fraction"] > 0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the model and masks)."""
        latency = {
            f"latency_ms_{when}": {str(batch): round(ms, 3) for batch, ms in by_batch.items()}
            for when, by_batch in self.latency_ms.items()
        }
        return {
            "input_shape": list(self.input_shape),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "params_removed": _fraction_removed(self.params_before, self.params_after),
            "flops_removed": _fraction_removed(self.flops_before, self.flops_after),
            "state_dict_bytes_before": self.state_dict_bytes_before,
            "state_dict_bytes_after": self.state_dict_bytes_after,
            **latency,
            "latency_threads": self.threads,
            "verification": self.verification.to_dict() if self.verification else None,
            "groups": self.groups,
            "blocked_groups": len(self.blocked),
            "pruned_channels": sum(g["pruned"] for g in self.groups),
        }


def _fraction_removed(before: int, after: int) -> float:
    return round(1 - after / before, 6) if before else 0.0


def _state_dict_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return len(buffer.getvalue())


def _removed_channels(selection: GroupSelection) -> dict[tuple[int, str], set[int]]:
    """(id of module or parameter, "out"/"in") → removed indices, from the groups, before surgery."""
    analysis = selection.analysis
    removed: dict[tuple[int, str], set[int]] = {}
    for index, root_idxs in selection.pruned.items():
        for item in analysis.pruning_group(index, root_idxs):
            target, fn = item.dep.target.module, item.dep.handler
            side = "out" if analysis.graph.is_out_channel_pruning_fn(fn) else "in"
            if isinstance(target, nn.Parameter):
                side = f"dim{item.dep.target.pruning_dim}"
            removed.setdefault((id(target), side), set()).update(int(i) for i in item.idxs)
    return removed


def _kept(size: int, removed: set[int] | None) -> Fraction:
    return Fraction(size - len(removed or ()), size) if size else Fraction(1)


def _predicted_counts(selection: GroupSelection, flops_per_module: Mapping[str, int], flops_total: int) -> tuple[int, int]:
    """Parameters and FLOPs the slimmed model must have, from shapes and removed channels alone.

    Conv/Linear weights scale with the kept fraction of outputs and of inputs (a depthwise conv
    only with its channels), biases and norm parameters with the kept outputs; FLOPs of each
    conv/linear scale the same way. An independent check of the surgery Torch-Pruning performs.
    """
    model = selection.analysis.model
    removed = _removed_channels(selection)
    params = Fraction(0)
    flops_removed = Fraction(0)
    counted: set[int] = set()
    for name, module in model.named_modules():
        out_removed = removed.get((id(module), "out"))
        in_removed = removed.get((id(module), "in"))
        if isinstance(module, PRUNABLE_TYPES):
            depthwise = is_depthwise(module)
            width_out = output_width(module)
            width_in = module.in_features if isinstance(module, nn.Linear) else module.in_channels
            keep_out = _kept(width_out, (out_removed or set()) | (in_removed or set()) if depthwise else out_removed)
            keep_in = Fraction(1) if depthwise else _kept(width_in, in_removed)
            for pname, p in module.named_parameters(recurse=False):
                counted.add(id(p))
                params += p.numel() * keep_out * (keep_in if pname == "weight" else 1)
            flops_removed += flops_per_module.get(name, 0) * (1 - keep_out * keep_in)
        else:
            for p in module.parameters(recurse=False):
                if id(p) in counted:
                    continue
                counted.add(id(p))
                keep = Fraction(1)
                if out_removed and p.dim() >= 1:
                    # Norm layers hold one value per channel (LayerNorm along its last dim).
                    keep = _kept(p.shape[-1] if isinstance(module, nn.LayerNorm) else p.shape[0], out_removed)
                for dim in range(p.dim()):
                    # A bare nn.Parameter Torch-Pruning cuts along one of its dims.
                    keep *= _kept(p.shape[dim], removed.get((id(p), f"dim{dim}")))
                params += p.numel() * keep
    return int(params), int(Fraction(flops_total) - flops_removed)


def _prune(selection: GroupSelection) -> nn.Module:
    """Remove the selected channels from the analysed copy, group by group, with Torch-Pruning."""
    analysis = selection.analysis
    for index, root_idxs in selection.pruned.items():
        record = analysis.groups[index]
        # Each group is rebuilt just before it is cut: concatenation offsets move as earlier
        # groups shrink their inputs, and the graph re-reads them when a group is made.
        try:
            pruning = analysis.pruning_group(index, root_idxs)
            if not analysis.graph.check_pruning_group(pruning):
                raise SlimError(f"group rooted at layer {record.root}: removing {len(root_idxs)} of {record.channels} channels would empty a layer")
            pruning.prune()
        except FpgmError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # Torch-Pruning's surgery raises whatever the layer it cuts raises
            raise SlimError(
                f"Torch-Pruning could not cut the group rooted at layer {record.root} ({type(exc).__name__}: "
                f"{str(exc)[:160]}); the masked export still works"
            ) from exc
    if isinstance(analysis.model, nn.Module):
        _update_attention_heads(analysis)
    return analysis.model


def _update_attention_heads(analysis: Any) -> None:
    """After whole heads left an attention's qkv, tell the module how many it has (its forward reshapes by them)."""
    modules = dict(analysis.model.named_modules())
    for attention in analysis.heads.values():
        module, qkv = modules[attention.module], modules[attention.qkv]
        heads = qkv.out_features // (3 * attention.head_dim)
        if heads != module.num_heads:
            module.num_heads = heads
            if isinstance(getattr(module, "attn_dim", None), int):
                module.attn_dim = heads * attention.head_dim


def _no_longer_runs(exc: BaseException, slimmed: nn.Module) -> SlimError:
    return SlimError(
        f"the slimmed model no longer runs: {type(exc).__name__} {_where_failed(exc, slimmed)}: {str(exc)[:160]}; "
        "the model's code fixes a width that slimming changed. Its masked export still works"
    )


def _where_failed(exc: BaseException, model: nn.Module) -> str:
    """The innermost module of ``model`` on the traceback, and the line of the model's own code (not torch's) that failed."""
    names = {module: name for name, module in model.named_modules()}
    torch_dir = str(Path(torch.__file__).parent)
    module_at, code_at = None, None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and owner in names:
            module_at = (names[owner] or "the model itself", type(owner).__name__)
        if not frame.f_code.co_filename.startswith(torch_dir) and module_at is not None:
            code_at = (frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    if module_at is None:
        return "in the model's forward pass"
    where = f"in {module_at[0]} ({module_at[1]})"
    if code_at is not None:
        filename, line = code_at
        where += f", at `{linecache.getline(filename, line).strip()}` ({Path(filename).name}:{line})"
    return where


@contextlib.contextmanager
def _restore_modes(models: Mapping[str, nn.Module], modes: Mapping[str, bool]) -> Iterator[None]:
    # Timing runs in eval mode; the caller's models go back to the mode they were in.
    try:
        yield
    finally:
        for label, model in models.items():
            model.train(modes[label])


def _time_runs(
    models: Mapping[str, nn.Module], input_shape: tuple[int, ...], batch_sizes: tuple[int, ...], repeats: int, warmup: int
) -> dict[str, dict[int, float]]:
    results: dict[str, dict[int, float]] = {label: {} for label in models}
    modes = {label: model.training for label, model in models.items()}
    with torch.inference_mode(), _restore_modes(models, modes):
        for batch in batch_sizes:
            x = torch.randn((batch, *input_shape[1:]), generator=torch.Generator().manual_seed(0))
            times: dict[str, list[float]] = {label: [] for label in models}
            for model in models.values():
                model.eval()
                for _ in range(warmup):
                    model(x)
            for _ in range(max(1, repeats)):
                for label, model in models.items():
                    start = time.perf_counter()
                    model(x)
                    times[label].append((time.perf_counter() - start) * 1000)
            for label in models:
                results[label][batch] = statistics.median(times[label])
    return results


def _latency_child(path: str) -> None:
    """Entry of the latency subprocess: time the models saved at ``path`` with the thread count asked for."""
    # Our own file, written a moment ago by the parent: unpickling it runs no foreign code.
    job = torch.load(path, weights_only=False)
    torch.set_num_threads(job["threads"])
    results = _time_runs(job["models"], job["input_shape"], job["batch_sizes"], job["repeats"], job["warmup"])
    torch.save({"results": results}, path)


def _time_in_subprocess(
    models: Mapping[str, nn.Module], input_shape: tuple[int, ...], batch_sizes: tuple[int, ...], repeats: int,
    warmup: int, threads: int,
) -> dict[str, dict[int, float]]:
    """The runs of :func:`_time_runs` in a fresh Python process with ``threads`` intra-op threads.

    torch's thread count is process-wide: setting it here would change every other session's.
    """
    with tempfile.TemporaryDirectory(prefix="fpgm-latency-") as folder:
        path = os.path.join(folder, "job.pt")
        job = {"models": {label: copy_model(model).cpu() for label, model in models.items()}, "threads": threads,
               "input_shape": tuple(input_shape), "batch_sizes": tuple(batch_sizes), "repeats": repeats, "warmup": warmup}
        torch.save(job, path)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        done = subprocess.run(
            [sys.executable, "-c", f"from fpgm_core.slim import _latency_child; _latency_child({path!r})"],
            env=env, capture_output=True, text=True,
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise SlimError(f"the latency measurement with {threads} threads failed in its subprocess: {tail[0][:200]}")
        return torch.load(path, weights_only=False)["results"]


def measure_latency(
    models: Mapping[str, nn.Module],
    input_shape: tuple[int, ...],
    *,
    batch_sizes: tuple[int, ...] = (1, 32),
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
) -> dict[str, dict[int, float]]:
    """Median wall-clock milliseconds of one CPU forward pass, per model and batch size.

    The models' runs alternate (A, B, A, B, …) so that a machine busy with something else slows
    all of them alike, rather than whichever happened to run then. The runs hold the model lock
    shared only, so other sessions' work goes on meanwhile.

    Args:
        models: label → model, e.g. ``{"before": original, "after": slimmed}``; put in eval mode.
        input_shape: one input, e.g. ``(1, 3, 224, 224)``; its batch dimension is replaced.
        repeats: timed runs per model and batch size (the median is reported), after ``warmup``.
        threads: intra-op CPU threads for the runs. torch's setting is process-wide, so it is never
            changed here: a count other than this process's runs the measurement in a subprocess.
    """
    if threads and threads != torch.get_num_threads():
        return _time_in_subprocess(models, input_shape, batch_sizes, repeats, warmup, int(threads))
    with MODEL_LOCK.shared():
        return _time_runs(models, input_shape, batch_sizes, repeats, warmup)


def _verify(original: nn.Module, slimmed: nn.Module, masks: Mapping[str, Tensor], input_shape: tuple[int, ...]) -> tuple[float, float]:
    """Max |slimmed − group-masked| on seeded random input, and the tolerance it must stay within."""
    masked = apply_masks(original, masks).eval()
    x = torch.randn((_VERIFY_BATCH, *input_shape[1:]), generator=torch.Generator().manual_seed(0))
    with MODEL_LOCK.shared(), torch.no_grad():
        reference = masked(x)
        try:
            output = slimmed.eval()(x)
        except MemoryError:
            raise
        except Exception as exc:  # the model's own code meets tensors narrower than it was written for
            raise _no_longer_runs(exc, slimmed) from exc
    if reference.shape != output.shape:
        raise SlimError(f"the slimmed model's output has shape {tuple(output.shape)}, the original's {tuple(reference.shape)}")
    tolerance = _RELATIVE_TOLERANCE * float(reference.abs().max())
    return float((output - reference).abs().max()), tolerance


def slim_model(
    model: nn.Module,
    plan: SparsityPlan,
    *,
    input_shape: tuple[int, ...],
    scores: Mapping[str, Tensor] | None = None,
    device: str | torch.device | None = None,
    verify: bool = True,
    latency_repeats: int = 0,
    batch_sizes: tuple[int, ...] = (1, 32),
    threads: int | None = None,
    time_limit_s: float | None = None,
) -> SlimResult:
    """Return a physically smaller copy of ``model`` without the channels ``plan`` prunes.

    Channels are removed per dependency group (see :mod:`fpgm_core.groups` for how coupled
    layers' FPGM scores are combined and how many channels a group loses); groups masking cannot
    reproduce are kept whole and listed with the layer that blocks them. ``model`` is not changed.

    Args:
        model: the model to slim (any device; slimming runs on a CPU copy).
        plan: the sparsity plan, as for :func:`fpgm_core.plan_masks`.
        input_shape: one input the model accepts, e.g. ``(1, 3, 224, 224)``.
        scores: FPGM scores per layer to reuse (same metric as the plan).
        device: where FPGM distances are computed.
        verify: check outputs against the group-masked model and counts against the prediction;
            a failed check raises SlimError.
        latency_repeats: timed runs per batch size for the latency figures; 0 skips them.
        batch_sizes: batch sizes timed.
        threads: CPU threads for the latency runs (the same before and after); a count other than
            this process's is measured in a subprocess (see :func:`measure_latency`).
        time_limit_s: longest wait for Torch-Pruning's analysis (default
            :data:`fpgm_core.groups.ANALYSIS_TIME_LIMIT_S`).

    Only forward passes and traces hold the model lock, shared: other sessions' work goes on
    during a slim, its analysis and its latency runs included.

    Raises:
        SlimError: the model cannot be traced or its analysis runs over its time (naming the
            blocking layer or operation), every group the plan prunes is blocked, the surgery or
            the slimmed model's forward pass fails (naming the module), or the slimmed model fails
            its check. PlanError for a bad plan.
    """
    original = model
    if model.training or any(p.device.type != "cpu" for p in model.parameters()):
        # A forward pass in training mode would update the caller's BatchNorm statistics.
        original = copy_model(model).cpu().eval()
    try:
        selection = select_group_channels(original, plan, input_shape=input_shape, scores=scores, device=device,
                                          time_limit_s=time_limit_s)
    except GroupError as exc:
        raise SlimError(str(exc)) from exc
    except FpgmError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # Torch-Pruning's group making or the masked probe pass, after a good analysis
        raise SlimError(
            f"choosing the channels to cut failed ({type(exc).__name__} {_where_failed(exc, original)}: {str(exc)[:160]}); "
            "the masked export still works"
        ) from exc
    rows = selection.group_rows()
    blocked = [row for row in rows if row["blocked_by"] is not None and row["planned_fraction"] > 0]
    if blocked and not selection.pruned:
        first = blocked[0]
        raise SlimError(
            f"nothing can be slimmed: every group the plan prunes is blocked, e.g. at layer {first['blocked_by']} "
            f"({first['reason']}); the masked export still works"
        )
    params_before = count_parameters(original)
    flops_before, per_module = layer_flops(original, input_shape)
    predicted_params, predicted_flops = _predicted_counts(selection, per_module, flops_before)
    bytes_before = _state_dict_bytes(original)
    slimmed = _prune(selection).eval()
    params_after = count_parameters(slimmed)
    try:
        flops_after = layer_flops(slimmed, input_shape)[0]
    except MemoryError:
        raise
    except Exception as exc:  # its first forward pass: see _verify
        raise _no_longer_runs(exc, slimmed) from exc
    verification = None
    if verify:
        diff, tolerance = _verify(original, slimmed, selection.masks, input_shape)
        verification = Verification(
            max_abs_diff=diff,
            tolerance=tolerance,
            outputs_match=diff <= tolerance,
            params_predicted=predicted_params,
            flops_predicted=predicted_flops,
            counts_match=(predicted_params, predicted_flops) == (params_after, flops_after),
        )
        if not verification.outputs_match:
            raise SlimError(
                f"the slimmed model's outputs differ from the group-masked model's by {diff:.3g} "
                f"(tolerance {tolerance:.3g}); not exporting a model that computes something else"
            )
        if not verification.counts_match:
            raise SlimError(
                f"the slimmed model has {params_after} parameters and {flops_after} FLOPs, "
                f"the groups predicted {predicted_params} and {predicted_flops}"
            )
    result = SlimResult(
        model=slimmed,
        masks=selection.masks,
        groups=rows,
        input_shape=tuple(input_shape),
        params_before=params_before,
        params_after=params_after,
        flops_before=flops_before,
        flops_after=flops_after,
        state_dict_bytes_before=bytes_before,
        state_dict_bytes_after=_state_dict_bytes(slimmed),
        verification=verification,
    )
    if latency_repeats > 0:
        result.threads = int(threads) if threads else torch.get_num_threads()
        result.latency_ms = measure_latency(
            {"before": original, "after": slimmed}, input_shape, batch_sizes=batch_sizes, repeats=latency_repeats,
            threads=threads,
        )
    return result


@dataclass(frozen=True)
class ModelFile:
    """A serialised model: its bytes, format, where it was written, and its round-trip check."""

    format: str
    data: bytes
    path: Path | None
    max_abs_diff: float | None
    tolerance: float | None
    dynamic_batch: bool
    note: str | None = None

    @property
    def size(self) -> int:
        """File size in bytes."""
        return len(self.data)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (without the bytes)."""
        return {
            "format": self.format,
            "path": str(self.path) if self.path else None,
            "bytes": self.size,
            "check_max_abs_diff": self.max_abs_diff,
            "check_tolerance": self.tolerance,
            "dynamic_batch": self.dynamic_batch,
            "note": self.note,
        }


def slim_format(name: str | os.PathLike) -> str:
    """The slimmed-export format (".pt2", ".onnx" or ".pt") of a file name or format; ExportError otherwise."""
    text = str(name).lower()
    suffix = f".{text.lstrip('.')}" if f".{text.lstrip('.')}" in SLIM_FORMATS else Path(text).suffix
    if suffix not in SLIM_FORMATS:
        raise ExportError(f"output {str(name)!r} must end in .pt2, .onnx or .pt")
    return suffix


def _batch_dim() -> Any:
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def _export_program(model: nn.Module, example: Tensor) -> tuple[Any, bool]:
    """A torch.export program with a dynamic batch dimension, or a fixed one where that fails."""
    try:
        return torch.export.export(model, (example,), dynamic_shapes=_batch_dim()), True
    except Exception:  # models that specialise on the batch size export with the example's
        return torch.export.export(model, (example,)), False


def _pt2_bytes(model: nn.Module, example: Tensor) -> tuple[bytes, bool]:
    program, dynamic = _export_program(model, example)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue(), dynamic


def _onnx_bytes(model: nn.Module, example: Tensor) -> tuple[bytes, bool]:
    for dynamic in (True, False):
        try:
            program = torch.onnx.export(
                model, (example,), dynamo=True, external_data=False, verbose=False,
                dynamic_shapes=_batch_dim() if dynamic else None,
            )
            return program.model_proto.SerializeToString(), dynamic
        except Exception as exc:  # the exporter raises many types; the fixed-batch try reports
            if not dynamic:
                raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
    raise AssertionError("unreachable")


def _run_file(fmt: str, data: bytes, x: Tensor) -> Tensor:
    """Load ``data`` the way a user would and run it on ``x``."""
    if fmt == ".pt2":
        return torch.export.load(io.BytesIO(data)).module()(x)
    if fmt == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    # Our own bytes, written a moment ago: unpickling them runs no foreign code.
    return torch.load(io.BytesIO(data), weights_only=False)(x)


@holding_model_lock
def serialize_model(model: nn.Module, fmt: str, *, input_shape: tuple[int, ...], check: bool = True) -> ModelFile:
    """The bytes of ``model`` as a ``.pt2``, ``.onnx`` or ``.pt`` file, loaded back and checked.

    Holds the model lock exclusively: torch.export patches nn.Module for the whole process while
    it traces, and another thread's forward pass meanwhile would compute wrong numbers.

    The batch dimension is exported dynamic where the model allows. With ``check`` the file is
    loaded as a user would (torch.export.load, onnxruntime, torch.load) and its outputs compared
    with the model's on random input; a mismatch raises ExportError.
    """
    fmt = slim_format(fmt)
    model = model.eval()
    example = torch.randn((_VERIFY_BATCH, *input_shape[1:]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if fmt == ".pt2":
            data, dynamic = _pt2_bytes(model, example)
        elif fmt == ".onnx":
            data, dynamic = _onnx_bytes(model, example)
        else:
            buffer = io.BytesIO()
            torch.save(model, buffer)
            data, dynamic = buffer.getvalue(), True
    note = PT_PICKLE_NOTE if fmt == ".pt" else None
    if not dynamic:
        note = f"exported for batch size {_VERIFY_BATCH} only (the model fixes its batch size when traced)"
    if not check:
        return ModelFile(fmt, data, None, None, None, dynamic, note)
    x = torch.randn((_VERIFY_BATCH, *input_shape[1:]), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
        got = _run_file(fmt, data, x)
    diff = float((got - expected).abs().max())
    tolerance = _RELATIVE_TOLERANCE * float(expected.abs().max())
    if not diff <= tolerance:
        raise ExportError(f"the exported {fmt} file's outputs differ from the model's by {diff:.3g} (tolerance {tolerance:.3g})")
    return ModelFile(fmt, data, None, diff, tolerance, dynamic, note)


def export_slimmed(model: nn.Module, out: str | os.PathLike, *, input_shape: tuple[int, ...]) -> ModelFile:
    """Write ``model`` (usually ``SlimResult.model``) to ``out`` (.pt2, .onnx or .pt), checked, atomically."""
    out = Path(out)
    file = serialize_model(model, slim_format(out), input_shape=input_shape)
    write_atomically({out: file.data})
    return ModelFile(file.format, file.data, out, file.max_abs_diff, file.tolerance, file.dynamic_batch, file.note)

