"""``--executor``, shared by the commands that run many independent points (``sweep``,
``sensitivity``, ``finetune-sweep``): where the points run, and the summary of where they ran."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from ..devices import resolve_device
from ..execution import Executor, ExecutorError, RayExecutor, parse_executor

__all__ = ["inline", "points_device", "add_executor_argument", "open_executor", "execution_summary", "print_execution"]


def inline(args: argparse.Namespace) -> bool:
    """Whether ``--executor`` leaves the points in this process."""
    return getattr(args, "executor", None) in (None, "inline")


def points_device(args: argparse.Namespace):
    """``--device``, defaulting to CPU when the points run on CPU workers elsewhere."""
    return resolve_device(args.device if args.device is not None or inline(args) else "cpu")


def add_executor_argument(parser: argparse.ArgumentParser) -> None:
    """``--executor SPEC`` (default inline)."""
    parser.add_argument(
        "--executor", metavar="SPEC",
        help="where the points run: inline (default: this process), processes:N (N local worker processes), "
             "ray (the Ray cluster at RAY_ADDRESS, else a Ray started on this machine) or ray:ADDRESS; "
             "--device defaults to cpu with processes and ray",
    )


def open_executor(args: argparse.Namespace) -> Executor:
    """The executor ``--executor`` names, connected: a cluster out of reach fails here, before any work."""
    if not inline(args) and args.device is not None and resolve_device(args.device).type != "cpu":
        raise ExecutorError(f"--executor {args.executor} runs points on CPU workers: use --device cpu "
                            "(points on GPUs across workers are not supported yet)")
    executor = parse_executor(args.executor)
    try:
        where = executor.describe()  # connects to a cluster, or starts one
    except BaseException:
        executor.close()
        raise
    if not getattr(args, "quiet", False) and not inline(args):
        print(f"points run {where}", file=sys.stderr, flush=True)
    return executor


def execution_summary(executor: Executor, since: float) -> dict:
    """Where this command's points ran (runs that ended after ``since``, a ``time.monotonic()``): counts
    per host and process, and their time."""
    reports = [report for report in executor.reports() if report.finished >= since]
    placements: Counter = Counter()
    for report in reports:
        placements.update(report.placements)
    hosts: Counter = Counter()
    for (host, _), count in placements.items():
        hosts[host] += count
    summary = {
        "executor": executor.name,
        "where": executor.describe(),
        "workers": executor.workers,
        "runs": len(reports),
        "points": sum(report.points for report in reports),
        "seconds": sum(report.seconds for report in reports),
        "hosts": dict(hosts),
        "processes": [{"host": host, "pid": pid, "points": n} for (host, pid), n in sorted(placements.items())],
    }
    if isinstance(executor, RayExecutor):
        summary["address"] = executor.address
        summary["nodes"] = executor.nodes
    return summary


def print_execution(summary: dict) -> None:
    """One line: how many points ran where, in how many processes on how many hosts."""
    hosts = ", ".join(f"{host} {count}" for host, count in summary["hosts"].items())
    processes = len(summary["processes"])
    print(f"{summary['points']} points ran {summary['where']} in {summary['seconds']:.1f} s: "
          f"{processes} process{'es' if processes != 1 else ''} on {len(summary['hosts'])} host"
          f"{'s' if len(summary['hosts']) != 1 else ''} ({hosts})")
