"""Benchmark: the demo model's accuracy-vs-sparsity sweep, against the 20 s target, in one run.

    python bench/bench_sweep.py [--seeds 5] [--repeats 3] [--threads N] [--json FILE]

10 global sparsities (0 … 0.9) × 4 criteria — FPGM L2, FPGM L1, smallest L2 norm, and random
(``--seeds`` runs) — on the 450 held-out digits, as ``fpgm_core.sensitivity.sparsity_sweep`` runs
it for the dashboard and the CLI (scores once per criterion, FLOPs and reference outputs once).
Beside it, the floor: as many plain forward passes of the unpruned model, with no scoring and no
masked copies, to show what the pruning machinery adds. Median wall time of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fpgm_core import build_model  # noqa: E402
from fpgm_core.evaluation import demo_data, predict  # noqa: E402
from fpgm_core.sensitivity import SWEEP_SPARSITIES, sparsity_sweep  # noqa: E402

CRITERIA = ("fpgm-l2", "fpgm-l1", "norm-l2", "random")
TARGET_S = 20.0


def _forwards_only(model, data, evaluations: int) -> int:
    """The floor: one forward pass of the whole split per evaluation, nothing else."""
    for _ in range(evaluations):
        predict(model, data.images)
    return evaluations


def _time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="random pruning runs (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is shown (default 3)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model("demo", "default").model
    data = demo_data()
    # Warm-up: the first forward and the first fx trace pay one-off costs the dashboard pays once.
    sparsity_sweep(model, data, sparsities=(0.5,), criteria=("fpgm-l2",), device="cpu")

    ours_s, points = _time(
        lambda: sparsity_sweep(model, data, criteria=CRITERIA, seeds=range(args.seeds), device="cpu"), args.repeats
    )
    floor_s, _ = _time(lambda: _forwards_only(model, data, len(points)), args.repeats)

    print(f"demo model, {data.n} held-out digits, {len(SWEEP_SPARSITIES)} sparsities × {len(CRITERIA)} criteria "
          f"(random × {args.seeds} seeds) = {len(points)} evaluations, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'variant':34} {'seconds':>8} {'per evaluation':>15} {'of the target':>14}")
    for name, seconds in (("sparsity_sweep", ours_s), ("forward passes only (floor)", floor_s)):
        print(f"{name:34} {seconds:8.2f} {1000 * seconds / len(points):12.1f} ms {seconds / TARGET_S:13.1%}")
    print(f"sweep / floor = {ours_s / floor_s:.2f}× · target < {TARGET_S:.0f} s: {'met' if ours_s < TARGET_S else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "evaluations": len(points), "sweep_s": ours_s, "forwards_only_s": floor_s, "target_s": TARGET_S,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
