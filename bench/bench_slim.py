"""Benchmark: slimmed models, measured — which torchvision and timm architectures slim, and ResNet-50 beside the paper.

    python bench/bench_slim.py [--part archs|timm|resnet50|all] [--repeats 5] [--threads 2] [--json FILE]

archs: ten torchvision classifiers (random init, seed 0, 224 px) slimmed at 30 % uniform FPGM
sparsity: pass/fail, parameters and FLOPs before/after, groups kept whole (and the layer that
blocks them), the slimmed-vs-group-masked output difference, and a .pt2 and .onnx round trip.

timm: the twenty timm architectures of ``tests/test_zoo.py`` (random init, norms randomised, the
zoo's input sizes) at 30 % uniform FPGM sparsity: whether fx traced them, their output layers, whether
every pruned channel is exactly zero after its norm (forward hooks), and the slim: FLOPs cut, the
slimmed-vs-group-masked difference, the groups kept whole and why, or the SlimError that stops it.

resnet50: FLOPs cut and measured CPU latency (median of repeats, batch 1 and 32, inference mode,
the same thread count for every model, runs interleaved) at 30 % and 40 %, in two settings —
the paper's (only the first two convs of each bottleneck pruned, residual channels kept) and every
layer (residual groups too) — side by side with the paper's rows (He et al., CVPR 2019).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fpgm_core import SparsityPlan, build_model, layer_scores  # noqa: E402
from fpgm_core.slim import SlimError, measure_latency, serialize_model, slim_model  # noqa: E402

ARCHITECTURES = (
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
    "vgg16_bn", "densenet121", "regnet_y_400mf", "convnext_tiny", "shufflenet_v2_x1_0",
)
# FPGM paper, Table (ResNet-50 on ImageNet, "FPGM-only"): FLOPs cut at 30 % and 40 % filter
# sparsity, and the realistic speed-up it measured for the 40 % model.
PAPER_ROWS = {0.3: {"flops_cut": 0.422, "measured_speedup": None}, 0.4: {"flops_cut": 0.535, "measured_speedup": 0.382}}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _millions(value: int) -> str:
    return f"{value / 1e6:.2f} M"


def _giga(value: int) -> str:
    return f"{value / 1e9:.2f} G"


def arch_rows(formats: tuple[str, ...]) -> list[dict]:
    rows = []
    for arch in ARCHITECTURES:
        loaded = build_model(arch, "none")
        start = time.perf_counter()
        row = {"arch": arch}
        try:
            result = slim_model(loaded.model, SparsityPlan(sparsity=0.3), input_shape=loaded.input_shape)
        except SlimError as exc:
            row.update(passed=False, error=str(exc), seconds=round(time.perf_counter() - start, 1))
            rows.append(row)
            print(f"{arch}: cannot slim — {exc}", file=sys.stderr)
            continue
        check = result.verification
        blocked = result.blocked
        row.update(
            passed=check.passed,
            params_before=result.params_before,
            params_after=result.params_after,
            flops_before=result.flops_before,
            flops_after=result.flops_after,
            max_abs_diff=check.max_abs_diff,
            tolerance=check.tolerance,
            groups=len(result.groups),
            blocked_groups=len(blocked),
            blocked_by=sorted({b["blocked_by"] for b in blocked})[:2],
            blocked_reason=blocked[0]["reason"] if blocked else None,
        )
        for fmt in formats:
            try:
                file = serialize_model(result.model, fmt, input_shape=loaded.input_shape)
                row[f"{fmt}_bytes"] = file.size
                row[f"{fmt}_check"] = file.max_abs_diff
            except Exception as exc:  # an exporter failure is a result to report, not a crash
                row[f"{fmt}_bytes"] = None
                row[f"{fmt}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
                row["passed"] = False
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"{arch}: done in {row['seconds']} s", file=sys.stderr)
    return rows


def print_arch_table(rows: list[dict], formats: tuple[str, ...]) -> None:
    print("\n## Slimmed export at 30 % uniform FPGM sparsity (torchvision, random init seed 0, 224 px)\n")
    print("| architecture | slims | params before → after | FLOPs before → after (cut) | slimmed vs group-masked max diff (tol) | groups kept whole | " + " | ".join(f"{f} round trip" for f in formats) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(formats))
    for row in rows:
        if "params_before" not in row:
            print(f"| {row['arch']} | no | — | — | — | {row['error']} |" + " — |" * len(formats))
            continue
        cut = 1 - row["flops_after"] / row["flops_before"]
        blocked = "none" if not row["blocked_groups"] else f"{row['blocked_groups']} of {row['groups']} (e.g. {', '.join(row['blocked_by'])})"
        exports = " | ".join(
            f"ok, {row[f'{f}_bytes'] / 1e6:.1f} MB" if row.get(f"{f}_bytes") else f"fails: {row.get(f'{f}_error')}" for f in formats
        )
        print(
            f"| {row['arch']} | {'yes' if row['passed'] else 'no'} | {_millions(row['params_before'])} → {_millions(row['params_after'])} "
            f"| {_giga(row['flops_before'])} → {_giga(row['flops_after'])} ({_pct(cut)}) "
            f"| {row['max_abs_diff']:.1e} ({row['tolerance']:.1e}) | {blocked} | {exports} |"
        )


# Short names for the reasons groups are kept whole (fpgm_core.groups words them in full).
_BLOCK_REASONS = (
    ("normalises over the channels", "LayerNorm/GroupNorm over the channels"),
    ("no pruned layer feeds directly", "BatchNorm after an add or concatenation"),
    ("splits these channels", "a fixed channel split"),
    ("per-head parameters", "per-head attention biases"),
    ("bare nn.Parameter", "a bare parameter"),
    ("receives non-zero values", "masking cannot match the cut"),
)


def _reason(text: str | None) -> str:
    return next((short for key, short in _BLOCK_REASONS if key in (text or "")), "other")


def timm_rows() -> list[dict]:
    import fpgm_core as fc
    from fpgm_core.tracing import model_trace
    from timm_zoo import SLIM_TIME_LIMIT_S, ZOO, build, unzeroed_channels

    rows = []
    for spec in ZOO:
        start = time.perf_counter()
        model = build(spec)
        trace = model_trace(model)
        plan = SparsityPlan(sparsity=0.3)
        masks = fc.plan_masks(model, plan)
        problems, pairs = unzeroed_channels(fc.apply_masks(model, masks), masks, spec.input_shape)
        row = {
            "arch": spec.name, "input": spec.size, "traced": trace.traced, "outputs": list(trace.outputs),
            "masked_ok": not problems, "norm_pairs_checked": pairs, "params_before": fc.count_parameters(model),
        }
        try:
            result = slim_model(model, plan, input_shape=spec.input_shape, time_limit_s=SLIM_TIME_LIMIT_S)
        except SlimError as exc:
            row.update(passed=False, error=str(exc), seconds=round(time.perf_counter() - start, 1))
            rows.append(row)
            print(f"{spec.name}: cannot slim — {exc}", file=sys.stderr)
            continue
        blocked = result.blocked
        reasons: dict[str, int] = {}
        for group in blocked:
            reasons[_reason(group["reason"])] = reasons.get(_reason(group["reason"]), 0) + 1
        row.update(
            passed=result.verification.passed, params_after=result.params_after, flops_before=result.flops_before,
            flops_after=result.flops_after, max_abs_diff=result.verification.max_abs_diff,
            tolerance=result.verification.tolerance, groups=len(result.groups), blocked_groups=len(blocked),
            blocked_reasons=reasons, heads=sum(1 for g in result.groups if g.get("heads", 1) > 1),
            seconds=round(time.perf_counter() - start, 1),
        )
        rows.append(row)
        print(f"{spec.name}: done in {row['seconds']} s", file=sys.stderr)
    return rows


def print_timm_table(rows: list[dict]) -> None:
    print("\n## timm at 30 % uniform FPGM sparsity (random init, norms randomised)\n")
    print("| architecture | input | fx traced | output layers | pruned channels zero | slims | FLOPs before → after (cut) | max diff (tol) | groups kept whole |")
    print("|---|---:|---|---|---|---|---|---|---|")
    for row in rows:
        head = (f"| {row['arch']} | {row['input']} | {'yes' if row['traced'] else 'no (registration order)'} "
                f"| {', '.join(row['outputs'])} | {'yes' if row['masked_ok'] else 'NO'} ")
        if "flops_after" not in row:
            print(head + f"| no | — | — | {row['error']} |")
            continue
        cut = 1 - row["flops_after"] / row["flops_before"]
        whole = "none" if not row["blocked_groups"] else f"{row['blocked_groups']} of {row['groups']} (" + ", ".join(
            f"{count} {reason}" for reason, count in sorted(row["blocked_reasons"].items(), key=lambda kv: -kv[1])) + ")"
        if row["heads"]:
            whole += f"; whole heads cut in {row['heads']} attention groups"
        print(head + f"| {'yes' if row['passed'] else 'no'} | {_giga(row['flops_before'])} → {_giga(row['flops_after'])} ({_pct(cut)}) "
              f"| {row['max_abs_diff']:.1e} ({row['tolerance']:.1e}) | {whole} |")


def _paper_plan(model: torch.nn.Module, sparsity: float) -> SparsityPlan:
    """The paper's ResNet-50 setting: conv1 and conv2 of every bottleneck pruned, nothing else."""
    names = [n for n, _ in model.named_modules() if n.startswith("layer") and n.endswith((".conv1", ".conv2"))]
    return SparsityPlan(sparsity=0.0, overrides={name: sparsity for name in names})


def resnet50_rows(repeats: int, threads: int) -> tuple[list[dict], dict]:
    loaded = build_model("resnet50", "none")
    shape = loaded.input_shape
    scores = layer_scores(loaded.model, "l2", device="cpu")  # once, shared by every plan
    slimmed = {}
    rows = []
    for setting in ("paper", "all"):
        for sparsity in (0.3, 0.4):
            plan = _paper_plan(loaded.model, sparsity) if setting == "paper" else SparsityPlan(sparsity=sparsity)
            result = slim_model(loaded.model, plan, input_shape=shape, scores=scores)
            label = f"{setting}-{int(sparsity * 100)}"
            slimmed[label] = result.model
            rows.append({
                "label": label, "setting": setting, "sparsity": sparsity,
                "params_before": result.params_before, "params_after": result.params_after,
                "flops_before": result.flops_before, "flops_after": result.flops_after,
                "flops_cut": 1 - result.flops_after / result.flops_before,
                "params_cut": 1 - result.params_after / result.params_before,
                "verified": result.verification.passed, "max_abs_diff": result.verification.max_abs_diff,
            })
            print(f"resnet50 {label}: slimmed", file=sys.stderr)
    # threads equals this process's count (main sets it), so the runs stay in this process.
    latency = measure_latency({"original": loaded.model, **slimmed}, shape, batch_sizes=(1, 32), repeats=repeats, warmup=1, threads=threads)
    for row in rows:
        for batch in (1, 32):
            before, after = latency["original"][batch], latency[row["label"]][batch]
            row[f"ms_b{batch}"] = after
            row[f"time_saved_b{batch}"] = 1 - after / before
            row[f"speedup_b{batch}"] = before / after
    return rows, latency["original"]


def print_resnet50_table(rows: list[dict], original: dict, repeats: int, threads: int) -> None:
    print(f"\n## ResNet-50 slimmed (224 px, CPU, {threads} threads, median of {repeats} runs, interleaved)\n")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Unpruned: batch 1 {original[1]:.1f} ms, batch 32 {original[32]:.0f} ms. Load average after the runs: {load}.\n")
    print("| setting | sparsity | FLOPs cut (ours) | FLOPs cut (paper) | params cut | batch 1 ms (time saved, ×) | batch 32 ms (time saved, ×) | paper's measured speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        paper = PAPER_ROWS[row["sparsity"]]
        setting = "paper's: bottleneck conv1+conv2" if row["setting"] == "paper" else "every layer, residual groups too"
        print(
            f"| {setting} | {_pct(row['sparsity'])} | {_pct(row['flops_cut'])} | {_pct(paper['flops_cut'])} | {_pct(row['params_cut'])} "
            f"| {row['ms_b1']:.1f} ({_pct(row['time_saved_b1'])}, {row['speedup_b1']:.2f}×) "
            f"| {row['ms_b32']:.0f} ({_pct(row['time_saved_b32'])}, {row['speedup_b32']:.2f}×) "
            f"| {_pct(paper['measured_speedup']) if row['setting'] == 'paper' else '—'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("archs", "timm", "resnet50", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model and batch size (median)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every timed run")
    parser.add_argument("--formats", default=".pt2,.onnx", help="export formats checked per architecture")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    formats = tuple(f for f in args.formats.split(",") if f)
    report = {"torch": torch.__version__, "threads": args.threads}
    if args.part in ("archs", "all"):
        report["architectures"] = arch_rows(formats)
        print_arch_table(report["architectures"], formats)
    if args.part in ("timm", "all"):
        report["timm"] = timm_rows()
        print_timm_table(report["timm"])
    if args.part in ("resnet50", "all"):
        rows, original = resnet50_rows(args.repeats, args.threads)
        report["resnet50"] = {"rows": rows, "original_ms": original}
        print_resnet50_table(rows, original, args.repeats, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
