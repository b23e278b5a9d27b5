"""Benchmark: what running points elsewhere costs (sensitivity, fine-tune sweep) — worker processes and Ray against in-process.

    python bench/bench_cluster.py [--part overhead|resnet18|finetune|all] [--repeats 3] [--images 16]
                                  [--sparsities 0.3,0.6,0.9] [--json FILE]

overhead: the demo model's per-layer sensitivity (6 layers × 9 sparsities = 54 points on the
450 held-out digits) in this process (1 torch thread), on 1 and 2 local worker processes and on
a Ray started here with 1 and 2 workers. Each executor's start (interpreters, Ray, the first
run's transfers) is timed apart from its warm runs; warm runs alternate with in-process runs so
that the machine's drift cancels from the ratio. Per-point overhead = (1-worker run − in-process
run) / points: what shipping a point and its result costs beyond computing it (with 2 workers
on 2 cores the ratio to in-process is shown instead).

resnet18: a resnet18 (random init, seed 0) sensitivity on a zip of random 224-px images the
bench writes (``--images``, ImageFolder layout, through the same zip loader and transforms as
users' data), in this process and on Ray with 1 and 2 workers; and the cost model: resnet50 on
5000 images against the number of workers, from the measured per-image time of one point.

finetune: the demo's fine-tune sweep (2 criteria × 1 sparsity × 2 seeds = 4 points, 1 epoch each
on the digits' 1,347 training images, 1 torch thread) in this process, on 1 local worker process
and on a Ray started here with 1 worker: start, warm run beside an in-process run, overhead per
point, and whether every point's fine-tuned weights equal the in-process ones (SHA-256).

On 2 cores a speed-up is not expected (the workers share the cores the in-process run uses);
the overhead is the figure. Ray here runs with token authentication (a token for this run only,
in the environment, when none is configured) and binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fpgm_core import build_model, count_flops, prunable_layers  # noqa: E402
from fpgm_core.evaluation import demo_data, image_transform, load_image_zip, model_categories, predict  # noqa: E402
from fpgm_core.execution import INLINE, ProcessExecutor, RayExecutor, token_source  # noqa: E402
from fpgm_core.sensitivity import LAYER_SPARSITIES, layer_sensitivity  # noqa: E402
from fpgm_core.training import FineTuneSettings, demo_training_data, finetuned_sweep  # noqa: E402

COST_MODEL_IMAGES = 5000
COST_MODEL_WORKERS = (1, 2, 4, 8, 16, 32, 64)


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _image_zip(count: int, path: Path) -> Path:
    """``count`` random 256-px RGB JPEGs in 4 class folders named by index."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
            archive.writestr(f"{i % 4}/{i:04d}.jpg", buffer.getvalue())
    return path


def _executors(cores: int):
    """(name, factory) of every executor measured, in order; Ray ones start a Ray here of that size."""
    yield "processes:1", lambda: ProcessExecutor(1, threads=1)
    if cores >= 2:
        yield "processes:2", lambda: ProcessExecutor(2, threads=1)
    yield "ray, 1 worker", lambda: RayExecutor(None, local_cpus=1)
    if cores >= 2:
        yield "ray, 2 workers", lambda: RayExecutor(None, local_cpus=2)


def overhead(repeats: int) -> list[dict]:
    torch.set_num_threads(1)
    model = build_model("demo", "default").model
    data = demo_data()
    reference = predict(model, data.images)

    def sensitivity(executor):
        return layer_sensitivity(model, data, reference=reference, device="cpu", executor=executor)

    sensitivity(INLINE)  # warm-up: first fx traces and forwards
    expected = sensitivity(INLINE)
    points = len(expected.points)
    rows = []
    for name, make in _executors(os.cpu_count() or 1):
        start_s, executor = _timed(make)
        with executor:
            first_s, result = _timed(lambda: sensitivity(executor))
            assert result == expected, f"{name}: results differ from in-process"
            inline_s, warm_s = [], []
            for _ in range(repeats):
                inline_s.append(_timed(lambda: sensitivity(INLINE))[0])
                warm_s.append(_timed(lambda: sensitivity(executor))[0])
            rows.append({"executor": name, "workers": executor.workers, "points": points,
                         "start_s": start_s + first_s - statistics.median(warm_s),
                         "run_s": statistics.median(warm_s), "inline_s": statistics.median(inline_s)})
    print(f"\ndemo sensitivity: {points} points, {data.n} digits, 1 torch thread per point; warm runs median of "
          f"{repeats}, each beside an in-process run")
    print(f"{'executor':16} {'workers':>7} {'start s':>8} {'run s':>7} {'in-proc s':>9} {'ms/point':>9} "
          f"{'overhead ms/point':>18} {'run / in-proc':>14}")
    for row in rows:
        per_point = 1000 * row["run_s"] / points
        # With one worker the difference is all overhead; with more it also holds the parallel gain.
        row["overhead_ms_per_point"] = 1000 * (row["run_s"] - row["inline_s"]) / points if row["workers"] == 1 else None
        overhead_text = f"{row['overhead_ms_per_point']:18.1f}" if row["overhead_ms_per_point"] is not None else f"{'—':>18}"
        print(f"{row['executor']:16} {row['workers']:7d} {row['start_s']:8.1f} {row['run_s']:7.2f} {row['inline_s']:9.2f} "
              f"{per_point:9.1f} {overhead_text} {row['run_s'] / row['inline_s']:13.2f}×")
    print("overhead ms/point = (1-worker run − in-process run) / points: shipping a point and its result")
    return rows


def resnet18(images: int, sparsities: list[float]) -> dict:
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        path = _image_zip(images, Path(folder) / "images.zip")
        data = load_image_zip(path, image_transform("resnet18"), categories=model_categories("resnet18"))
    torch.manual_seed(0)
    model = build_model("resnet18", "none").model.eval()
    reference = predict(model, data.images)
    layers = [layer.name for layer in prunable_layers(model) if not layer.is_output]
    points = len(layers) * len(sparsities)

    def sensitivity(executor):
        return layer_sensitivity(model, data, sparsities=sparsities, reference=reference, device="cpu", executor=executor)

    runs = {}
    inline_s, expected = _timed(lambda: sensitivity(INLINE))
    runs[f"in-process ({threads} threads)"] = {"workers": 1, "run_s": inline_s, "start_s": 0.0}
    torch.set_num_threads(1)
    inline1_s, _ = _timed(lambda: sensitivity(INLINE))
    runs["in-process (1 thread)"] = {"workers": 1, "run_s": inline1_s, "start_s": 0.0}
    torch.set_num_threads(threads)
    for workers in (1, 2) if (os.cpu_count() or 1) >= 2 else (1,):
        start_s, executor = _timed(lambda: RayExecutor(None, local_cpus=workers))
        with executor:
            connect_s, _ = _timed(executor.connect)
            # The first run starts the workers (interpreters, torch, the shared value fetched once each).
            first_s, _ = _timed(lambda: sensitivity(executor))
            warm_s, result = _timed(lambda: sensitivity(executor))
        runs[f"ray, {workers} worker{'s' if workers > 1 else ''}"] = {
            "workers": workers, "run_s": warm_s, "first_run_s": first_s, "start_s": start_s + connect_s,
            "same_top1": [p.top1 for p in result.points] == [p.top1 for p in expected.points],
            "identical": result == expected}
    print(f"\nresnet18 sensitivity (random init): {len(layers)} layers × {len(sparsities)} sparsities = {points} points "
          f"on {data.n} random 224-px images from a zip")
    print(f"{'where':26} {'start s':>8} {'first run s':>12} {'run s':>8} {'s/point':>8} {'speed-up':>9} "
          f"{'same top-1':>11} {'identical':>10}")
    for name, run in runs.items():
        first = f"{run['first_run_s']:12.1f}" if "first_run_s" in run else f"{'—':>12}"
        same = {True: "yes", False: "NO"}
        print(f"{name:26} {run['start_s']:8.1f} {first} {run['run_s']:8.1f} {run['run_s'] / points:8.2f} "
              f"{inline_s / run['run_s']:8.2f}× {same.get(run.get('same_top1'), '—'):>11} "
              f"{same.get(run.get('identical'), '—'):>10}")
    print("speed-up: against the in-process run with all threads; same top-1 / identical: every point against it")

    # Cost model: one point = one forward pass of every image; per image from the 1-thread run.
    per_image_18 = inline1_s / points / data.n
    resnet50 = build_model("resnet50", "none").model.eval()
    flops_ratio = count_flops(resnet50, (1, 3, 224, 224)) / count_flops(model, (1, 3, 224, 224))
    torch.set_num_threads(1)
    batch = torch.randn(8, 3, 224, 224)
    with torch.no_grad():
        resnet50(batch[:1])
        measured_50, _ = _timed(lambda: resnet50(batch))
    torch.set_num_threads(threads)
    per_image_50 = measured_50 / len(batch)
    points_50 = sum(1 for layer in prunable_layers(resnet50) if not layer.is_output) * len(LAYER_SPARSITIES)
    per_point_50 = per_image_50 * COST_MODEL_IMAGES
    ray_start = runs["ray, 1 worker"]["start_s"] + runs["ray, 1 worker"]["first_run_s"] - runs["ray, 1 worker"]["run_s"]
    print(f"\ncost model: resnet50 sensitivity on {COST_MODEL_IMAGES} images = {points_50} points (one per layer × "
          f"{len(LAYER_SPARSITIES)} sparsities), each a forward pass of every image")
    print(f"  per image, 1 thread: resnet18 {1000 * per_image_18:.1f} ms (measured in the sensitivity) → resnet50 "
          f"{1000 * per_image_18 * flops_ratio:.1f} ms by FLOPs (×{flops_ratio:.2f}); measured directly "
          f"{1000 * per_image_50:.1f} ms")
    print(f"  per point: {per_point_50:.0f} s; start ≈ {ray_start:.0f} s (Ray, workers, one transfer of the model and "
          f"{COST_MODEL_IMAGES} images, {COST_MODEL_IMAGES * 3 * 224 * 224 * 4 / 2**30:.1f} GB, to each node)")
    print(f"{'workers (1 core each)':>22} {'hours':>8}")
    model_rows = []
    for workers in COST_MODEL_WORKERS:
        waves = -(-points_50 // workers)
        seconds = ray_start + waves * per_point_50
        model_rows.append({"workers": workers, "hours": seconds / 3600})
        print(f"{workers:22d} {seconds / 3600:8.2f}")
    return {"points": points, "images": data.n, "runs": runs, "per_image_ms": {"resnet18": 1000 * per_image_18,
            "resnet50_by_flops": 1000 * per_image_18 * flops_ratio, "resnet50_measured": 1000 * per_image_50},
            "cost_model": {"points": points_50, "per_point_s": per_point_50, "start_s": ray_start, "rows": model_rows}}


def finetune(repeats: int) -> list[dict]:
    torch.set_num_threads(1)
    model = build_model("demo", "default").model
    data = demo_training_data()

    def sweep(executor):
        points = finetuned_sweep(model, data, FineTuneSettings(epochs=1), sparsities=(0.5,), criteria=("fpgm-l2", "random"),
                                 seeds=(0, 1), executor=executor)
        return points

    sweep(INLINE)  # warm-up
    expected = [p.weights for p in sweep(INLINE)]
    points = len(expected)
    rows = []
    for name, make in (("processes:1", lambda: ProcessExecutor(1, threads=1)), ("ray, 1 worker", lambda: RayExecutor(None, local_cpus=1))):
        start_s, executor = _timed(make)
        with executor:
            first_s, result = _timed(lambda: sweep(executor))
            same = [p.weights for p in result] == expected
            inline_s, warm_s = [], []
            for _ in range(repeats):
                inline_s.append(_timed(lambda: sweep(INLINE))[0])
                warm_s.append(_timed(lambda: sweep(executor))[0])
        run, inline = statistics.median(warm_s), statistics.median(inline_s)
        rows.append({"executor": name, "points": points, "start_s": start_s + first_s - run, "run_s": run, "inline_s": inline,
                     "overhead_ms_per_point": 1000 * (run - inline) / points, "same_weights": same})
    print(f"\ndemo fine-tune sweep: {points} points of 1 epoch on {data.n_train} digits, 1 torch thread; warm runs median of "
          f"{repeats}, each beside an in-process run")
    print(f"{'executor':16} {'start s':>8} {'run s':>7} {'in-proc s':>9} {'s/point':>8} {'overhead ms/point':>18} "
          f"{'run / in-proc':>14} {'same weights':>13}")
    for row in rows:
        print(f"{row['executor']:16} {row['start_s']:8.1f} {row['run_s']:7.2f} {row['inline_s']:9.2f} "
              f"{row['inline_s'] / points:8.2f} {row['overhead_ms_per_point']:18.1f} {row['run_s'] / row['inline_s']:13.2f}× "
              f"{'yes' if row['same_weights'] else 'NO':>13}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("overhead", "resnet18", "finetune", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per executor (default 3)")
    parser.add_argument("--images", type=int, default=16, help="images in the resnet18 zip (default 16)")
    parser.add_argument("--sparsities", default="0.3,0.6,0.9", help="resnet18 part (default 0.3,0.6,0.9)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if token_source() is None:
        # The Rays started here keep token authentication on; this run's token stays in its environment.
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load average {os.getloadavg()[0]:.1f}")
    results = {}
    if args.part in ("overhead", "all"):
        results["overhead"] = overhead(args.repeats)
    if args.part in ("resnet18", "all"):
        results["resnet18"] = resnet18(args.images, [float(s) for s in args.sparsities.split(",")])
    if args.part in ("finetune", "all"):
        results["finetune"] = finetune(args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
