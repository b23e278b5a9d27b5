"""python -m fpgm_core evaluate / sweep / sensitivity / demo-train, end to end, and their bad input."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from fpgm_core import build_model, prunable_layers, prune_count
from cli_runner import run_cli
from fpgm_core.demo import DEMO_CHECKPOINT, DEMO_METRICS


# The demo's 8×8 convolutions are too small to split across threads (see conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_json(argv, capsys) -> dict:
    code, out, err = run_cli([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def reported() -> dict:
    return json.loads(DEMO_METRICS.read_text())


@pytest.fixture
def tiny_zip(tmp_path):
    path = tmp_path / "images.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for folder in ("0", "1", "2"):
            for i in range(3):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
                archive.writestr(f"{folder}/{i}.png", buffer.getvalue())
    return path


def test_evaluate_demo_reports_the_committed_accuracy(capsys, reported):
    result = run_json(["evaluate", "--model", "demo"], capsys)
    assert result["top1"] == reported["test_top1"] and result["n"] == reported["n_test"]
    assert result["agreement"] == 1.0 and result["kl"] == 0.0 and result["pruned_filters"] == 0
    same = run_json(["evaluate", "--arch", "demo", "--weights", "default", "--sparsity", "0"], capsys)
    assert (same["top1"], same["agreement"], same["n"]) == (result["top1"], 1.0, result["n"])


@pytest.mark.parametrize("criterion", ["fpgm-l2", "fpgm-l1", "norm-l1", "norm-l2", "random"])
def test_evaluate_at_high_sparsity_is_clearly_below(capsys, reported, criterion):
    result = run_json(["evaluate", "--model", "demo", "--sparsity", "0.9", "--criterion", criterion], capsys)
    assert result["criterion"] == criterion and result["n"] == 450
    assert result["top1"] < reported["test_top1"] - 0.2 and result["agreement"] < 1.0
    layers = prunable_layers(build_model("demo", "default").model)
    assert result["pruned_filters"] == sum(prune_count(0.9, l.filters) for l in layers if not l.is_output)
    assert result["flops_removed"] > 0.9


def test_evaluate_prints_a_human_summary(capsys):
    code, out, _ = run_cli(["evaluate", "--model", "demo", "--sparsity", "0.3", "--criterion", "norm-l2"], capsys)
    assert code == 0 and "top-1" in out and "agreement" in out and "smallest L2 norm" in out


def test_evaluate_a_torchvision_model_on_an_image_folder_zip(capsys, tiny_zip):
    result = run_json(["evaluate", "--arch", "resnet18", "--weights", "none", "--data", tiny_zip, "--sparsity", "0.5"], capsys)
    assert result["n"] == 9 and result["data"]["classes"] == 3
    assert 0.0 <= result["top1"] <= 1.0 and 0.0 <= result["agreement"] <= 1.0


def test_sensitivity_recipe_replays_in_evaluate_and_prune(capsys, tmp_path, reported):
    recipe = tmp_path / "suggested.json"
    result = run_json(["sensitivity", "--model", "demo", "--budget-points", "1", "--sparsities", "0.1,0.3,0.5",
                       "--max-evaluations", "12", "--save-recipe", recipe, "--quiet"], capsys)
    suggestion = result["suggestion"]
    assert len(result["sensitivity"]["points"]) == 6 * 3
    assert suggestion["drop"] <= 0.01 + 1e-9 and suggestion["evaluations"] <= 12
    replay = run_json(["evaluate", "--model", "demo", "--recipe", recipe], capsys)
    assert replay["top1"] == suggestion["top1"] and reported["test_top1"] - replay["top1"] <= 0.01 + 1e-9
    code, _, err = run_cli(["prune", "--arch", "demo", "--weights", "default", "--recipe", recipe,
                            "--out", tmp_path / "pruned.safetensors"], capsys)
    assert code == 0, err


def test_sweep_json_has_a_row_per_criterion_and_sparsity(capsys):
    result = run_json(["sweep", "--model", "demo", "--criteria", "fpgm-l2", "norm-l1", "random", "--seeds", "2",
                       "--sparsities", "0,0.9", "--quiet"], capsys)
    rows = {(row["criterion"], row["sparsity"]): row for row in result["summary"]}
    assert set(rows) == {(c, s) for c in ("fpgm-l2", "norm-l1", "random") for s in (0.0, 0.9)}
    assert rows["random", 0.9]["runs"] == 2 and len(result["points"]) == 2 * 4
    assert all(rows[c, 0.0]["top1"] > rows[c, 0.9]["top1"] + 0.2 for c in ("fpgm-l2", "norm-l1", "random"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--arch", "resnet18"], "give --data ZIP"),
        (["evaluate", "--model", "demo", "--data", "missing.zip"], "does not exist"),
        (["evaluate", "--model", "demo", "--sparsity", "0.5", "--recipe", "r.json"], "either --recipe"),
        (["evaluate", "--model", "demo", "--sparsity", "1.5"], "outside [0, 1]"),
        (["evaluate", "--model", "demo", "--criterion", "taylor"], "unknown criterion"),
        (["evaluate", "--model", "demo", "--arch", "demo"], "not allowed with"),
        (["evaluate", "--model", "demo", "--layer", "nope=0.5"], "unknown layer"),
        (["sweep", "--model", "demo", "--criteria", "random", "--seeds", "0"], "seed"),
        (["sensitivity", "--model", "demo", "--budget-points", "150"], "between 0 and 100"),
        (["sensitivity", "--model", "demo", "--save-recipe", "plan.txt"], "must end in .json"),
    ],
)
def test_bad_input_exits_2_with_a_short_message(capsys, argv, message):
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_hostile_zip_is_refused(capsys, tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../../escaped.png", b"x")
    code, _, err = run_cli(["evaluate", "--model", "demo", "--data", path], capsys)
    assert code == 2 and err.startswith("error:") and "outside the archive" in err
    assert not (tmp_path.parent / "escaped.png").exists()


def test_demo_train_writes_where_asked_and_never_over_the_committed_asset(capsys, tmp_path):
    before = DEMO_CHECKPOINT.read_bytes()
    code, _, err = run_cli(["demo-train", "--out", DEMO_CHECKPOINT.parent, "--epochs", "1"], capsys)
    assert code == 2 and "--overwrite" in err and DEMO_CHECKPOINT.read_bytes() == before
    code, out, err = run_cli(["demo-train", "--out", tmp_path / "trained", "--epochs", "1", "--seed", "1", "--json"], capsys)
    assert code == 0 and "epoch 1/1" in err
    result = json.loads(out)
    assert (tmp_path / "trained" / "demo.safetensors").is_file() and (tmp_path / "trained" / "demo.json").is_file()
    assert result["epochs"] == 1 and result["seed"] == 1 and 0.0 <= result["test_top1"] <= 1.0
    code, _, err = run_cli(["demo-train", "--out", tmp_path / "trained", "--epochs", "1"], capsys)
    assert code == 2 and "already holds" in err
