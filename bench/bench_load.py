"""Benchmark: many concurrent browser sessions on one dashboard server — response times and server memory.

    python bench/bench_load.py [--sessions 8] [--waves 2] [--json FILE]

Starts ``streamlit run app.py`` on a free port and drives ``--sessions`` headless-Chromium sessions
at once (see ``tests/load_sessions.py``: each uploads its own weights, sets its own sparsity and
downloads its export), ``--waves`` times one after another. Every download is checked against its
own session's weights and plan. Prints, per wave: wall time, the median and worst response (a user
action until the page is idle again), the worst per action, the server's peak and final resident
memory, and the server's CPU seconds. The browsers run on the same machine as the server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from load_sessions import (  # noqa: E402
    MemorySampler, check_downloads, make_plans, response_summary, rss_mb, run_sessions, running_dashboard, server_errors,
)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch, running_dashboard(Path(scratch) / "server.log") as server:
        idle_mb = rss_mb(server.pid)
        for wave in range(1, args.waves + 1):
            folder = Path(scratch) / f"wave-{wave}"
            plans = make_plans(args.sessions, folder / "weights", first_index=(wave - 1) * args.sessions)
            cpu, start = _cpu_seconds(server.pid), time.perf_counter()
            with MemorySampler(server.pid) as memory:
                results = run_sessions(server.url, plans, folder / "downloads")
            wall = time.perf_counter() - start
            time.sleep(2)
            problems = [e for r in results for e in r.errors] + [p for r in results for p in check_downloads(r)]
            rows.append({"wave": wave, "sessions": args.sessions, "wall_s": wall, **response_summary(results),
                         "idle_mb": idle_mb, "peak_mb": memory.peak_mb, "after_mb": rss_mb(server.pid),
                         "server_cpu_s": _cpu_seconds(server.pid) - cpu, "problems": problems})
        logged = server_errors(server.log)
    print(f"{os.cpu_count()} CPUs; server idle at {idle_mb:.0f} MB; server log errors: {len(logged)}")
    print("\n| wave | sessions | wall s | median response s | worst response s | server peak MB | server after MB | server CPU s | problems |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['wave']} | {r['sessions']} | {r['wall_s']:.0f} | {r['median_s']:.1f} | {r['worst_s']:.1f} | "
              f"{r['peak_mb']:.0f} | {r['after_mb']:.0f} | {r['server_cpu_s']:.0f} | {len(r['problems'])} |")
    print("\nworst response per action (s):")
    for action in [key for key in rows[0] if key.startswith("worst ")]:
        print(f"  {action[6:]}: " + ", ".join(f"{r.get(action, float('nan')):.1f}" for r in rows))
    for r in rows:
        for problem in r["problems"]:
            print(f"wave {r['wave']}: {problem}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "server_log_errors": logged}, indent=2))


if __name__ == "__main__":
    main()
