"""python -m fpgm_core slim: the slimmed file, its JSON measurements, recipes, and every refusal."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fpgm_core import build_model
from cli_runner import run_cli

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--repeats", "1", "--batch-sizes", "1,2", "--threads", "1"]


def test_slim_json_holds_measurements_before_and_after_and_the_file_runs(tmp_path, capsys):
    out = tmp_path / "demo.pt2"
    code, stdout, _ = run_cli(["slim", "--arch", "demo", "--weights", "default", "--sparsity", "0.5", "--out", out, "--json", *FAST], capsys)
    assert code == 0
    summary = json.loads(stdout)
    for key in ("params_before", "params_after", "flops_before", "flops_after", "latency_ms_before", "latency_ms_after"):
        assert key in summary
    assert summary["params_after"] < summary["params_before"] and summary["flops_after"] < summary["flops_before"]
    assert set(summary["latency_ms_before"]) == {"1", "2"} and all(v > 0 for v in summary["latency_ms_after"].values())
    assert summary["verification"]["passed"] and summary["verification"]["params_predicted"] == summary["params_after"]
    assert summary["file"]["path"] == str(out) and summary["file_bytes_after"] == out.stat().st_size < summary["file_bytes_before"]
    assert any(group["coupled"] for group in summary["groups"])
    program = torch.export.load(out).module()
    assert program(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_slim_onnx_with_a_human_line(tmp_path, capsys):
    import onnxruntime

    out = tmp_path / "demo.onnx"
    code, stdout, _ = run_cli(["slim", "--arch", "demo", "--weights", "default", "--sparsity", "0.3", "--out", out, *FAST], capsys)
    assert code == 0
    assert stdout.startswith("slimmed demo: params 28.41k → ") and "outputs match the group-masked model" in stdout
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {session.get_inputs()[0].name: torch.randn(2, 1, 8, 8).numpy()})[0].shape == (2, 10)


def test_slim_replays_a_prune_recipe(tmp_path, capsys):
    assert run_cli(["prune", "--arch", "demo", "--weights", "default", "--sparsity", "0.25", "--out", tmp_path / "m.pt"], capsys)[0] == 0
    out = tmp_path / "demo.pt"
    code, stdout, err = run_cli(["slim", "--arch", "demo", "--weights", "default", "--recipe", tmp_path / "m.recipe.json", "--out", out, "--json", "--repeats", "0"], capsys)
    assert code == 0 and "weights_only=False" in err
    summary = json.loads(stdout)
    assert "latency_ms_before" not in summary
    assert {row["root"]: row["pruned"] for row in summary["groups"]}["down"] == 8
    assert torch.load(out, weights_only=False).down.out_channels == 24


def test_unslimmable_model_exits_2_naming_the_blocking_layer(tmp_path, capsys):
    code, _, err = run_cli(["slim", "--arch", "shufflenet_v2_x0_5", "--weights", "none", "--sparsity", "0.3", "--out", tmp_path / "s.pt2"], capsys)
    assert code == 2 and err.startswith("error: Torch-Pruning cannot slim this model: blocked at")
    assert "after layer stage" in err and "masked export still works" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    # The masked export of the same model and plan still works.
    code, _, _ = run_cli(["prune", "--arch", "shufflenet_v2_x0_5", "--weights", "none", "--sparsity", "0.3", "--out", tmp_path / "s.pt"], capsys)
    assert code == 0 and (tmp_path / "s.pt").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--sparsity", "0.5", "--out", "{tmp}/x.safetensors"], "must end in .pt2, .onnx or .pt"),
        (["--out", "{tmp}/x.pt2"], "give --sparsity"),
        (["--sparsity", "0.5", "--recipe", "{tmp}/r.json", "--out", "{tmp}/x.pt2"], "either --recipe or --sparsity"),
        (["--sparsity", "0.5", "--layer", "conv9=0.5", "--out", "{tmp}/x.pt2"], "unknown layer.*conv9"),
        (["--sparsity", "1.5", "--out", "{tmp}/x.pt2"], r"outside \[0, 1\]"),
        (["--sparsity", "0.5", "--batch-sizes", "0,2", "--out", "{tmp}/x.pt2"], "batch sizes must be positive"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_no_file(extra, message, tmp_path, capsys):
    argv = ["slim", "--arch", "demo", "--weights", "default", *[a.format(tmp=tmp_path) for a in extra]]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and __import__("re").search(message, err), err
    assert not list(tmp_path.glob("x.*"))


def test_real_process_prints_pure_json(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fpgm_core", "slim", "--arch", "demo", "--weights", "default", "--sparsity", "0.5",
         "--out", str(tmp_path / "d.pt2"), "--json", *FAST],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["params_after"] < summary["params_before"] == sum(p.numel() for p in build_model("demo", "default").model.parameters())
