"""fpgm_core.execution without a cluster: the inline executor, local worker processes, executor specs,
the CLI's --executor flag, and Ray staying optional (never imported by fpgm_core; a clear error
when asked for but missing)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_runner import run_cli
from fpgm_core import build_model
from fpgm_core.errors import FpgmError, PlanError
from fpgm_core.evaluation import EvaluationCancelled, demo_data, predict
from fpgm_core.execution import (
    INLINE,
    ExecutorError,
    InlineExecutor,
    ProcessExecutor,
    RayExecutor,
    parse_executor,
    point_should_stop,
)
from fpgm_core.sensitivity import layer_sensitivity

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Tasks are module-level: worker processes import this module to find them.
def _square_after(shared, point):
    """point² after a sleep that makes later points finish first."""
    time.sleep(shared["delay"] * (shared["n"] - point))
    return point * point


def _fails_on_three(shared, point):
    if point == 3:
        raise PlanError("point 3 is not a plan")
    return point


def _sleeps(shared, point):
    time.sleep(point)
    return point


def _sees_stop(shared, point):
    return point_should_stop()


def _live_workers() -> list[multiprocessing.Process]:
    return [child for child in multiprocessing.active_children() if child.is_alive()]


@pytest.fixture(scope="module")
def demo():
    model = build_model("demo", "default").model
    data = demo_data()
    return model, data, predict(model, data.images)


def test_inline_runs_in_order_reports_each_point_and_stops_between_points():
    calls = []
    assert INLINE.run(_fails_on_three, None, [1, 2], progress=lambda *c: calls.append(c), label=lambda p: f"p{p}") == [1, 2]
    assert calls == [(1, 2, "p1"), (2, 2, "p2")]
    report = INLINE.reports()[-1]
    assert report.points == 2 and report.placements == {(os.uname().nodename, os.getpid()): 2}
    with pytest.raises(EvaluationCancelled):
        INLINE.run(_fails_on_three, None, [1, 2], should_stop=lambda: len(calls) >= 3,
                   progress=lambda *c: calls.append(c))
    assert len(calls) == 3
    # A point running in the caller's thread can stop midway (between forward batches).
    stop = lambda: False  # noqa: E731
    assert INLINE.run(_sees_stop, None, [0], should_stop=stop) == [stop]
    assert point_should_stop() is None


def test_processes_return_results_in_order_report_each_point_and_raise_a_task_error_as_itself():
    calls = []
    shared = {"delay": 0.1, "n": 6}
    with ProcessExecutor(2) as executor:
        # Both workers up first (each submit starts one while none is idle), else on a busy machine
        # the first could finish every point before the second has started.
        executor.run(_sleeps, None, [2, 2])
        results = executor.run(_square_after, shared, list(range(6)),
                               progress=lambda done, total, what: calls.append((done, total, what)))
        report = executor.reports()[-1]
        assert results == [i * i for i in range(6)]
        assert [c[0] for c in calls] == list(range(1, 7)) and all(c[1] == 6 for c in calls)
        # Later points finish first (they sleep less): progress follows completion, results the points.
        assert [int(c[2]) for c in calls] != list(range(6))
        assert len(report.placements) == 2 and os.getpid() not in {pid for _, pid in report.placements}
        # Same shared value, same workers: a task's error comes back as itself and ends them.
        with pytest.raises(PlanError, match="point 3 is not a plan"):
            executor.run(_fails_on_three, shared, list(range(8)))
        assert _live_workers() == []


def test_processes_match_in_process_sensitivity_exactly_and_leave_the_model_alone(demo):
    model, data, reference = demo
    before = {name: value.clone() for name, value in model.state_dict().items()}
    inline = layer_sensitivity(model, data, sparsities=(0.3, 0.9), reference=reference, device="cpu")
    with ProcessExecutor(2) as executor:
        elsewhere = layer_sensitivity(model, data, sparsities=(0.3, 0.9), reference=reference, device="cpu",
                                      executor=executor)
    assert elsewhere == inline
    # Sent by plain pickle: multiprocessing's torch reductions would have moved the weights into
    # shared memory, changing the caller's model in place.
    assert not any(tensor.is_shared() for tensor in model.state_dict().values())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_a_stop_terminates_running_points_at_once():
    with ProcessExecutor(2) as executor:
        executor.run(_sleeps, None, [0, 0])  # both workers up: what follows times the stop, not the spawn
        started = time.monotonic()
        with pytest.raises(EvaluationCancelled):
            executor.run(_sleeps, None, [30, 30, 30], should_stop=lambda: time.monotonic() - started > 1)
        # 30-second points: back this early means they were terminated, not waited for.
        assert time.monotonic() - started < 15
        assert _live_workers() == []


def test_a_worker_that_dies_is_a_clear_error_not_a_hang():
    killed = []

    def kill_one(done, total, what):
        if not killed:
            victim = _live_workers()[0]
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)

    with ProcessExecutor(2) as executor:
        with pytest.raises(ExecutorError, match="worker process died"):
            executor.run(_sleeps, None, [0.3] * 10, progress=kill_one)
    assert killed and _live_workers() == []


@pytest.mark.parametrize(
    "spec, kind",
    [(None, InlineExecutor), ("inline", InlineExecutor), ("processes:3", ProcessExecutor), ("ray", RayExecutor),
     ("ray:10.0.0.5:6379", RayExecutor), ("RAY:auto", RayExecutor)],
)
def test_specs_name_their_executor_without_starting_anything(spec, kind, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    executor = parse_executor(spec)
    assert isinstance(executor, kind)
    if spec == "processes:3":
        assert executor.workers == 3
    if spec == "ray":
        assert executor.address is None  # a Ray started here, once used
    if spec == "ray:10.0.0.5:6379":
        assert executor.address == "10.0.0.5:6379"


def test_plain_ray_follows_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert parse_executor("ray").address == "10.1.2.3:6379"


@pytest.mark.parametrize(
    "spec, message",
    [("threads:4", "unknown executor 'threads:4'"), ("processes", "give the number of processes"),
     ("processes:two", "give the number of processes"), ("processes:0", "at least one process"),
     ("ray:", "give the cluster's address"), ("ray:headnode", "not a Ray address"), ("ray:host:99999", "not a Ray address"),
     ("inline:2", "unknown executor")],
)
def test_bad_specs_exit_2_with_one_error_line(spec, message, capsys):
    with pytest.raises(ExecutorError, match=message):
        parse_executor(spec)
    started = time.monotonic()
    code, out, err = run_cli(["sweep", "--model", "demo", "--executor", spec], capsys)
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert time.monotonic() - started < 5  # refused before any model is loaded


def test_the_cli_sweep_on_worker_processes_equals_in_process_and_says_where(capsys):
    argv = ["sweep", "--model", "demo", "--criteria", "fpgm-l2", "random", "--seeds", "2", "--sparsities", "0,0.4,0.8", "--json"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    inline = json.loads(out)
    code, out, err = run_cli([*argv, "--executor", "processes:2"], capsys)
    assert code == 0, err
    pooled = json.loads(out)
    assert pooled["points"] == inline["points"] and pooled["summary"] == inline["summary"]
    assert inline["execution"]["where"] == "in this process" and inline["execution"]["points"] == 9
    execution = pooled["execution"]
    assert execution["where"] == "in 2 local worker processes" and execution["points"] == 9
    # Which worker takes how many points is the scheduler's: under load one worker can be ready
    # long before the other and take all nine. Every point ran in a worker, none in this process.
    processes = execution["processes"]
    assert 1 <= len(processes) <= 2 and sum(p["points"] for p in processes) == 9
    assert os.getpid() not in {p["pid"] for p in processes}
    assert "points run in 2 local worker processes" in err and "[9/9]" in err


def test_ray_missing_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ExecutorError, match="Ray is not installed.*requirements-cluster.txt"):
        RayExecutor().connect()
    code, out, err = run_cli(["sensitivity", "--model", "demo", "--executor", "ray"], capsys)
    assert code == 2 and err.startswith("error: Ray is not installed") and err.count("\n") == 1


def test_fpgm_core_never_imports_ray():
    script = (
        "import sys, fpgm_core, fpgm_core.execution, fpgm_core.sensitivity, fpgm_core.cli\n"
        "from fpgm_core.execution import parse_executor\n"
        "parse_executor('ray:10.0.0.5:6379'); parse_executor('ray')\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_executor_errors_are_fpgm_errors():
    # The CLI prints FpgmErrors as one `error:` line and the dashboard shows them on the page.
    assert issubclass(ExecutorError, FpgmError)


def _counts_to(shared, point, send):
    stop = point_should_stop()
    for i in range(point):
        if stop is not None and stop():
            raise EvaluationCancelled("stopped")
        send((shared, i))
    return point * 10


def test_inline_streams_one_point_its_events_in_order_and_its_stop_reaches_the_task():
    events = []
    assert INLINE.stream(_counts_to, "e", 3, report=events.append) == 30
    assert events == [("e", 0), ("e", 1), ("e", 2)] and INLINE.reports()[-1].points == 1
    with pytest.raises(EvaluationCancelled):
        INLINE.stream(_counts_to, "e", 5, report=events.append, should_stop=lambda: len(events) >= 5)
    assert len(events) == 5
