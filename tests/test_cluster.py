"""Sweeps and sensitivity on a real Ray cluster: a local head bound to 127.0.0.1 with 2 workers and
token authentication, started for this module (tests/ray_cluster.py).

Same answers as in-process, a worker killed by pid mid-sweep, a stop (and an exception in the
caller) that leaves no task running, an unreachable address and a bad token failing in seconds, a
Ray started by the CLI itself, and the dashboard's Evaluate page running its sweep on the cluster.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ray_cluster import LOOPBACK_ONLY, RayHead, running_ray_head

if importlib.util.find_spec("ray") is None:
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError("Ray is not installed: the cluster tests must run in CI (requirements-test.txt)")
    pytest.skip("Ray is not installed (pip install -r requirements-cluster.txt)", allow_module_level=True)

# Ray reads this when first imported: set it before anything in this process imports ray.
os.environ.update(LOOPBACK_ONLY)

from app_jobs import finish_jobs  # noqa: E402
from cli_runner import run_cli  # noqa: E402
import fpgm_core  # noqa: E402
from fpgm_core import build_model  # noqa: E402
from fpgm_core.evaluation import EvalData, EvaluationCancelled, demo_data, predict  # noqa: E402
from fpgm_core.execution import INLINE, ExecutorError, RayExecutor  # noqa: E402
from fpgm_core.sensitivity import layer_sensitivity, sparsity_sweep, suggest_plan  # noqa: E402
from fpgm_core.plan import SparsityPlan  # noqa: E402
from fpgm_core.training import FineTuneSettings, demo_training_data, fine_tune_on, finetuned_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Cluster:
    def __init__(self, head: RayHead, executor: RayExecutor) -> None:
        self.head, self.executor = head, executor

    def idle(self, timeout: float = 10.0) -> bool:
        """Whether every CPU of the cluster is free again within ``timeout`` (Ray reports with a delay)."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ray.available_resources().get("CPU", 0) == ray.cluster_resources().get("CPU"):
                return True
            time.sleep(0.2)
        return False


@pytest.fixture(scope="module")
def cluster():
    if "ray" in sys.modules:
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER:
            pytest.fail("ray was imported before this module could bind it to 127.0.0.1")
    with running_ray_head(cpus=2) as head, pytest.MonkeyPatch.context() as patch:
        for name, value in head.environment().items():
            patch.setenv(name, value)
        patch.delenv("RAY_ADDRESS", raising=False)
        executor = RayExecutor(head.address)
        executor.connect()
        try:
            yield Cluster(head, executor)
        finally:
            executor.close()
            import ray

            # Before the head goes: a Ray driver whose cluster dies exits the whole process.
            ray.shutdown()


@pytest.fixture(scope="module")
def demo():
    model = build_model("demo", "default").model
    data = demo_data()
    return model, data, predict(model, data.images)


@pytest.fixture(scope="module")
def inline_sweep(demo):
    model, data, reference = demo
    return sparsity_sweep(model, data, seeds=(0, 1), reference=reference, device="cpu")


@pytest.fixture(scope="module")
def slow_points():
    """resnet18 (random init) on 48 random 112-px images: points long enough to be caught running."""
    torch.manual_seed(0)
    model = build_model("resnet18", "none").model.eval()
    data = EvalData(torch.randn(48, 3, 112, 112), torch.randint(0, 1000, (48,)), ("x",), "random 112-px images")
    return model, data, predict(model, data.images)


def _pids(report) -> set[int]:
    return {pid for _, pid in report.placements}


def test_the_demo_sweep_on_ray_equals_in_process(cluster, demo, inline_sweep):
    model, data, reference = demo
    done = []
    points = sparsity_sweep(model, data, seeds=(0, 1), reference=reference, device="cpu", executor=cluster.executor,
                            progress=lambda n, total, what: done.append(n))
    assert points == inline_sweep  # every field exactly: same top-1 counts, agreement, KL
    assert done == list(range(len(points) + 1))  # the reference, then one call per finished point
    report = cluster.executor.reports()[-1]
    assert report.points == len(points) and sum(report.placements.values()) == len(points)
    assert os.getpid() not in _pids(report) and len(_pids(report)) == 2


def test_the_demo_sensitivity_and_its_suggestion_on_ray_equal_in_process(cluster, demo):
    model, data, reference = demo
    inline = layer_sensitivity(model, data, reference=reference, device="cpu")
    on_ray = layer_sensitivity(model, data, reference=reference, device="cpu", executor=cluster.executor)
    assert on_ray == inline
    for budget in (0.01, 0.1):
        expected = suggest_plan(model, data, inline, budget, reference=reference, device="cpu")
        got = suggest_plan(model, data, on_ray, budget, reference=reference, device="cpu", executor=cluster.executor)
        assert got == expected and got.overrides


def test_a_worker_killed_by_pid_mid_sweep_is_retried_and_the_sweep_completes_equal(cluster, demo, inline_sweep):
    model, data, reference = demo
    killed: list[int] = []

    def kill_a_busy_worker(done: int, total: int, what: str) -> None:
        if done < 3 or killed:
            return
        deadline = time.monotonic() + 5
        while not (busy := cluster.head.running()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert busy, "no worker was running a point"
        os.kill(busy[0], signal.SIGKILL)
        killed.append(busy[0])

    points = sparsity_sweep(model, data, seeds=(0, 1), reference=reference, device="cpu", executor=cluster.executor,
                            progress=kill_a_busy_worker)
    assert killed and not Path(f"/proc/{killed[0]}").exists()
    assert points == inline_sweep
    assert cluster.executor.reports()[-1].points == len(points)


@pytest.mark.parametrize("how", ["should_stop", "exception in progress"])
def test_a_stop_cancels_the_outstanding_points_and_leaves_none_running(cluster, slow_points, how):
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    model, data, reference = slow_points
    running_at_stop: list[list[int]] = []
    stop = False

    def progress(done: int, total: int, what: str) -> None:
        nonlocal stop
        if done >= 1 and not running_at_stop:
            running_at_stop.append(cluster.head.running())
            stop = True
            if how == "exception in progress":
                raise StopException()  # what Streamlit raises in the script thread when the user clicks Stop

    expected = EvaluationCancelled if how == "should_stop" else StopException
    with pytest.raises(expected):
        layer_sensitivity(model, data, layers=["layer1.0.conv1", "layer3.0.conv1"], sparsities=(0.3, 0.6, 0.9),
                          reference=reference, device="cpu", executor=cluster.executor, progress=progress,
                          should_stop=lambda: stop)
    assert running_at_stop and running_at_stop[0], "the stop came when no point was running"
    assert cluster.head.running() == []  # at return, not eventually
    assert cluster.idle()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_cluster_fails_within_seconds_with_a_clear_message(capsys):
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(ExecutorError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        RayExecutor(f"127.0.0.1:{port}").connect()
    started_cli = time.monotonic()
    code, out, err = run_cli(["sweep", "--model", "demo", "--executor", f"ray:127.0.0.1:{port}", "--json"], capsys)
    assert time.monotonic() - started < 10 and time.monotonic() - started_cli < 5
    assert code == 2 and out == "" and err.startswith("error: cannot reach") and err.count("\n") == 1


def test_a_missing_or_wrong_token_is_refused_with_what_to_do(cluster, tmp_path):
    script = textwrap.dedent(f"""
        import json, os, time
        from fpgm_core.execution import ExecutorError, RayExecutor
        out = {{}}
        for case in ("missing", "wrong"):
            if case == "wrong":
                os.environ["RAY_AUTH_TOKEN"] = "0" * 64
            started = time.monotonic()
            try:
                RayExecutor({cluster.head.address!r}).connect()
                out[case] = ["connected", 0]
            except ExecutorError as exc:
                out[case] = [str(exc), time.monotonic() - started]
        print(json.dumps(out))
    """)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    env.update(LOOPBACK_ONLY, HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["missing"][0].startswith("no Ray authentication token") and out["missing"][1] < 10
    assert "refused this process's authentication token" in out["wrong"][0] and out["wrong"][1] < 15


def test_the_cli_runs_sweep_and_sensitivity_on_the_cluster_and_says_where(cluster, capsys, monkeypatch, inline_sweep):
    address = cluster.head.address
    code, out, err = run_cli(["sweep", "--model", "demo", "--seeds", "2", "--executor", f"ray:{address}", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["points"] == [point.to_dict() for point in inline_sweep]
    execution = result["execution"]
    assert execution["where"] == "on the cluster (2 workers)" and execution["address"] == address
    assert execution["points"] == len(inline_sweep) and execution["nodes"] == 1
    assert sum(p["points"] for p in execution["processes"]) == len(inline_sweep)
    assert os.getpid() not in {p["pid"] for p in execution["processes"]}
    assert f"points run on the cluster (2 workers)" in err and f"[{len(inline_sweep)}/{len(inline_sweep)}]" in err

    # Plain `ray` with RAY_ADDRESS set connects there; the human summary says where the points ran.
    monkeypatch.setenv("RAY_ADDRESS", address)
    argv = ["sensitivity", "--model", "demo", "--sparsities", "0.3,0.9", "--executor", "ray", "--quiet"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "ran on the cluster (2 workers)" in out.splitlines()[-1]
    code, expected, _ = run_cli(argv[:-3] + ["--quiet"], capsys)
    assert out.splitlines()[:-1] == expected.splitlines()[:-1]


def test_plain_ray_without_an_address_starts_a_local_ray_on_loopback_with_a_token(tmp_path, inline_sweep):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "FPGM_"))}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "fpgm_core", "sweep", "--model", "demo", "--criteria", "fpgm-l2", "random",
            "--seeds", "2", "--executor", "ray", "--json", "--quiet"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["execution"]["where"].startswith("on a local Ray (") and out["execution"]["address"].startswith("127.0.0.1:")
    # Ray's default for a cluster it starts: token authentication on, a token made for this user.
    assert (tmp_path / ".ray" / "auth_token").read_text().strip()
    expected = [p.to_dict() for p in inline_sweep if p.criterion in ("fpgm-l2", "random")]
    assert out["points"] == expected


def test_the_evaluate_page_runs_its_sweep_on_the_cluster_the_server_names(cluster, monkeypatch, inline_sweep):
    from streamlit.testing.v1 import AppTest

    import dashboard.cluster as place

    monkeypatch.setenv(place.RAY_ADDRESS_SETTING, cluster.head.address)
    monkeypatch.setattr(place, "_executors", {})  # this test's own executor, closed at its end
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    app.switch_page("pages/evaluate.py").run()
    assert not app.exception, app.exception
    assert any("run on the cluster (2 workers)" in caption.value for caption in app.caption)
    app.multiselect(key="eval_criteria").set_value(["fpgm-l2", "random"])
    app.number_input(key="eval_seeds").set_value(2)
    app.button(key="eval_run_sweep").click().run()
    finish_jobs(app)  # the sweep runs in the session's background job
    executor = place.job_executor()
    assert isinstance(executor, RayExecutor)
    executor.close()
    report = executor.reports()[-1]
    assert report.points == 30 and os.getpid() not in _pids(report)
    table = app.dataframe[0].value
    for criterion, label in (("fpgm-l2", "FPGM (L2)"), ("random", "random")):
        expected = {}
        for point in inline_sweep:
            if point.criterion == criterion:
                expected.setdefault(point.sparsity, []).append(point.top1)
        assert [round(v, 12) for v in table[label]] == [round(sum(v) / len(v), 12) for _, v in sorted(expected.items())]


# The fine-tune sweep: 1 epoch per point keeps a point at about a second on the demo.
FT_POINTS = dict(sparsities=(0.5,), criteria=("fpgm-l2", "random"), seeds=(0, 1))


@pytest.fixture(scope="module")
def digits():
    return demo_training_data()


@pytest.fixture(scope="module")
def inline_finetuned(demo, digits):
    return finetuned_sweep(demo[0], digits, FineTuneSettings(epochs=1), **FT_POINTS)


def timeless(points):
    """The points without their wall time, the one field that differs from run to run."""
    return [dataclasses.replace(point, seconds=0.0) for point in points]


def test_the_fine_tune_sweep_on_ray_gives_the_in_process_weights(cluster, demo, digits, inline_finetuned):
    done = []
    points = finetuned_sweep(demo[0], digits, FineTuneSettings(epochs=1), executor=cluster.executor,
                             progress=lambda n, total, what: done.append(n), **FT_POINTS)
    # Every field: top-1 and agreement before and after training, the fine-tuned weights' SHA-256.
    assert timeless(points) == timeless(inline_finetuned)
    assert len({point.weights for point in points}) == 4 and {point.threads for point in points} == {1}
    assert done == list(range(len(points) + 1))  # "starting with …", then one call per finished point
    report = cluster.executor.reports()[-1]
    assert report.points == 4 and os.getpid() not in _pids(report) and len(_pids(report)) == 2


def test_fine_tunes_on_ray_workers_run_on_the_callers_thread_count(cluster, demo, digits):
    # Ray starts its workers on one torch thread per reserved CPU (1). A caller on 2 threads gets
    # other weights in their last bits (CPU reductions split by thread count): the points must run
    # on the caller's count. 256 images keep the point short on 2 threads.
    small = dataclasses.replace(digits, train_images=digits.train_images[:256], train_labels=digits.train_labels[:256])
    kwargs = dict(sparsities=(0.5,), criteria=("fpgm-l2",), seeds=(0,))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = finetuned_sweep(demo[0], small, FineTuneSettings(epochs=1), **kwargs)
        there = finetuned_sweep(demo[0], small, FineTuneSettings(epochs=1), executor=cluster.executor, **kwargs)
    finally:
        torch.set_num_threads(threads)
    assert timeless(there) == timeless(here) and there[0].threads == 2
    assert os.getpid() not in _pids(cluster.executor.reports()[-1])


def test_a_stopped_fine_tune_sweep_leaves_no_fine_tune_running(cluster, demo, digits):
    running_at_stop: list[list[int]] = []
    stop = False

    def progress(done: int, total: int, what: str) -> None:
        nonlocal stop
        if done >= 1 and not running_at_stop:
            running_at_stop.append(cluster.head.running())
            stop = True

    with pytest.raises(EvaluationCancelled):
        finetuned_sweep(demo[0], digits, FineTuneSettings(epochs=4), sparsities=(0.3, 0.5, 0.7), criteria=("fpgm-l2",),
                        seeds=(0,), executor=cluster.executor, progress=progress, should_stop=lambda: stop)
    assert running_at_stop and running_at_stop[0], "the stop came when no fine-tune was running"
    assert cluster.head.running() == []  # at return, not eventually
    assert cluster.idle()


def test_the_cli_runs_the_fine_tune_sweep_on_the_cluster_and_says_where(cluster, capsys, inline_finetuned):
    address = cluster.head.address
    code, out, err = run_cli(["finetune-sweep", "--arch", "demo", "--weights", "default", "--data", "demo",
                              "--sparsities", "0.5", "--criteria", "fpgm-l2,random", "--seeds", "2", "--epochs", "1",
                              "--threads", "1", "--executor", f"ray:{address}", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [{**p, "seconds": 0.0} for p in result["points"]] == [p.to_dict() for p in timeless(inline_finetuned)]
    execution = result["execution"]
    assert execution["where"] == "on the cluster (2 workers)" and execution["address"] == address
    assert execution["points"] == 4 and os.getpid() not in {p["pid"] for p in execution["processes"]}
    assert "points run on the cluster (2 workers)" in err and "[4/4]" in err


def test_the_after_fine_tuning_sweep_runs_on_the_cluster_the_server_names(cluster, monkeypatch, inline_finetuned):
    from streamlit.testing.v1 import AppTest

    import dashboard.cluster as place

    monkeypatch.setenv(place.RAY_ADDRESS_SETTING, cluster.head.address)
    monkeypatch.setattr(place, "_executors", {})  # this test's own executor, closed at its end
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    app.switch_page("pages/evaluate.py").run()
    assert not app.exception, app.exception
    assert any("after fine-tuning too" in caption.value and "(2 workers)" in caption.value for caption in app.caption)
    app.multiselect(key="eval_ft_criteria").set_value(["fpgm-l2", "random"])
    app.multiselect(key="eval_ft_sparsities").set_value([50])
    app.number_input(key="eval_ft_seeds").set_value(2)
    app.number_input(key="eval_ft_epochs").set_value(1)
    app.button(key="eval_run_ft_sweep").click().run()
    finish_jobs(app)
    executor = place.job_executor()
    assert isinstance(executor, RayExecutor)
    report = executor.reports()[-1]
    assert report.points == 4 and os.getpid() not in _pids(report)
    table = next(frame.value for frame in app.dataframe if "fine-tuned" in frame.value.columns)
    by_criterion = {}
    for point in inline_finetuned:
        by_criterion.setdefault(point.criterion, []).append(point.top1)
    tuned = [float(cell.split()[0]) for cell in table["fine-tuned"]]
    assert tuned == [round(100 * sum(v) / len(v), 1) for v in by_criterion.values()]
    # The Fine-tune page's fine-tune runs there too, its epochs streamed back to the live chart.
    app.switch_page("pages/finetune.py").run()
    assert not app.exception, app.exception
    assert any("Fine-tunes run on the cluster (2 workers)" in caption.value for caption in app.caption)
    app.number_input(key="ft_epochs").set_value(2).run()
    app.button(key="ft_start").click().run()
    finish_jobs(app)
    kept = app.session_state["finetuned"]
    assert kept.result.extra["ran_on"]["pid"] != os.getpid() and [r.epoch for r in kept.result.history] == [0, 1, 2]
    assert executor.reports()[-1].points == 1 and os.getpid() not in _pids(executor.reports()[-1])
    here = fine_tune_on(INLINE, demo_model(), kept.plan, demo_training_data(), kept.result.settings)
    assert fpgm_core.model_fingerprint(kept.result.model) == fpgm_core.model_fingerprint(here.model)
    assert any(metric.label == "Held-out top-1, fine-tuned" for metric in app.metric)
    executor.close()


def demo_model():
    return build_model("demo", "default").model


def _records(records):
    """Per-epoch metrics without their times (which differ from run to run)."""
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


def test_a_fine_tune_on_ray_streams_its_epochs_as_they_end_and_gives_the_in_process_weights(cluster, digits):
    plan, settings = SparsityPlan(sparsity=0.5), FineTuneSettings(epochs=3)
    here_records, there_records, running = [], [], []
    here = fine_tune_on(INLINE, demo_model(), plan, digits, settings, progress=lambda e, m: here_records.append(m))

    def progress(epoch, metrics):
        there_records.append(metrics)
        if epoch == 1:
            running.append(cluster.head.running("_stream_point"))  # two epochs still to go

    steps = []
    there = fine_tune_on(cluster.executor, demo_model(), plan, digits, settings, progress=progress,
                         batch_progress=lambda *step: steps.append(step))
    assert running and running[0], "epoch 1 arrived only after the fine-tune had ended"
    assert fpgm_core.model_fingerprint(there.model) == fpgm_core.model_fingerprint(here.model)
    assert _records(there_records) == _records(here_records) and len(there_records) == 4
    assert there.extra["ran_on"]["pid"] not in (os.getpid(),) and there.threads == here.threads
    assert steps and steps[-1] == (3, 22, 22)  # thinned step reports, the last step of the last epoch among them
    assert cluster.head.running("_stream_point") == []


def test_a_stopped_fine_tune_on_ray_leaves_nothing_running(cluster, digits):
    stop = False

    def progress(epoch, metrics):
        nonlocal stop
        stop = stop or epoch == 1

    started = time.monotonic()
    with pytest.raises(EvaluationCancelled):
        fine_tune_on(cluster.executor, demo_model(), SparsityPlan(sparsity=0.5), digits, FineTuneSettings(epochs=40),
                     progress=progress, should_stop=lambda: stop)
    assert stop and time.monotonic() - started < 60
    assert cluster.head.running("_stream_point") == []  # at return, not eventually
    assert cluster.idle()


def test_a_fine_tune_that_fails_on_a_worker_raises_its_own_error_here(cluster, digits):
    from fpgm_core.training import FineTuneError

    unlabelled = dataclasses.replace(digits, train_labels=None, val_labels=None)
    with pytest.raises(FineTuneError, match="no labels"):
        fine_tune_on(cluster.executor, demo_model(), SparsityPlan(sparsity=0.5), unlabelled, FineTuneSettings(epochs=1))
    assert cluster.head.running("_stream_point") == []
