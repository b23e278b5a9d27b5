"""Benchmark: FPGM scoring speed and memory, ours against PyTorch's FPGMPruner, in one run.

    python bench/bench_scores.py [--device cpu|cuda] [--repeats 3] [--json FILE]

Speed: every Conv2d of torchvision resnet50 (random init, seed 0), whole-model scoring with the
seed's ``_compute_distance`` and with ``fpgm_core.fpgm_scores``, run alternately, median of repeats,
per metric.
Memory: one layer of 32768 filters × 512 inputs, peak memory above the weight for each, measured
in a fresh process (CPU: peak RSS via /proc; CUDA: max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fpgm_core import fpgm_scores, layer_filters  # noqa: E402

MEMORY_SHAPE = (32768, 512)


def _seed_pruner(metric: str):
    from torch.ao.pruning._experimental.pruner import FPGMPruner

    return FPGMPruner(dist={"l1": 1, "l2": 2}[metric])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_pair(seed_fn, ours_fn, repeats: int, device: str) -> tuple[float, float, object, object]:
    """Median milliseconds of the reference and of ours, run alternately so that both see the same
    machine: on a small shared machine the speed drifts by 20–40 % within a minute."""
    times: dict[str, list[float]] = {"seed": [], "ours": []}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for label, fn in (("seed", seed_fn), ("ours", ours_fn)):
            _sync(device)
            start = time.perf_counter()
            results[label] = fn()
            _sync(device)
            times[label].append((time.perf_counter() - start) * 1000)
    return statistics.median(times["seed"]), statistics.median(times["ours"]), results["seed"], results["ours"]


def speed_rows(device: str, repeats: int) -> list[dict]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    weights = [layer_filters(m).detach().to(device) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    rows = []
    for metric in ("l2", "l1"):
        pruner = _seed_pruner(metric)
        fpgm_scores(weights[0], metric, device=device)  # warm-up (lazy init, CUDA context)
        seed_ms, ours_ms, seed_out, ours_out = _time_pair(
            lambda: [pruner._compute_distance(w) for w in weights],
            lambda: [fpgm_scores(w, metric, device=device) for w in weights],
            repeats, device,
        )
        worst = max(float(((o - s.double()).abs() / s.double().abs()).max()) for o, s in zip(ours_out, seed_out))
        rows.append({"model": f"resnet50 ({len(weights)} Conv2d)", "metric": metric, "device": device,
                     "seed_ms": seed_ms, "ours_ms": ours_ms, "speedup": seed_ms / ours_ms, "max_rel_diff": worst})
    return rows


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _memory_child(which: str, device: str, queue) -> None:
    torch.manual_seed(0)
    weight = torch.randn(MEMORY_SHAPE, device=device)
    run = (lambda: fpgm_scores(weight, "l2", device=device)) if which == "ours" else (lambda: _seed_pruner("l2")._compute_distance(weight))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        queue.put(torch.cuda.max_memory_allocated() - base)
        return
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS to the current RSS
    base = _rss_bytes()
    run()
    queue.put(_peak_rss_bytes() - base)


def memory_row(device: str) -> dict:
    context = multiprocessing.get_context("spawn")
    peaks = {}
    for which in ("seed", "ours"):
        queue = context.Queue()
        child = context.Process(target=_memory_child, args=(which, device, queue))
        child.start()
        peaks[which] = queue.get()
        child.join()
    return {"layer": f"{MEMORY_SHAPE[0]}x{MEMORY_SHAPE[1]}", "metric": "l2", "device": device,
            "seed_peak_mb": peaks["seed"] / 2**20, "ours_peak_mb": peaks["ours"] / 2**20,
            "ratio": peaks["seed"] / max(peaks["ours"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    rows = speed_rows(args.device, args.repeats)
    print(f"\n| model | metric | device | seed ms | ours ms | speed-up | max rel. score diff |\n|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['metric']} | {r['device']} | {r['seed_ms']:.0f} | {r['ours_ms']:.0f} | {r['speedup']:.1f}× | {r['max_rel_diff']:.1e} |")
    memory = memory_row(args.device)
    print(f"\n| layer | metric | device | seed peak MB above weight | ours peak MB | seed/ours |\n|---|---|---|---:|---:|---:|")
    print(f"| {memory['layer']} | l2 | {memory['device']} | {memory['seed_peak_mb']:.0f} | {memory['ours_peak_mb']:.0f} | {memory['ratio']:.1f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps({"speed": rows, "memory": memory}, indent=2))


if __name__ == "__main__":
    main()
