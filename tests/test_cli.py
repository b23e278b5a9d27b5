"""python -m fpgm_core: layers and prune, end to end, and every bad input's short message."""

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save as save_safetensors

from fpgm_core import build_model
from cli_runner import run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_layers_json_lists_the_demo_layers(capsys):
    code, out, _ = run_cli(["layers", "--arch", "demo", "--weights", "default", "--json"], capsys)
    assert code == 0
    layers = json.loads(out)["layers"]
    assert [l["name"] for l in layers][:2] == ["conv1", "layer1.conv1"]
    assert layers[-1]["name"] == "fc" and layers[-1]["is_output"] is True


def test_prune_writes_checkpoint_masks_and_recipe_and_names_them(tmp_path, capsys):
    out = tmp_path / "demo.safetensors"
    code, stdout, _ = run_cli(
        ["prune", "--arch", "demo", "--weights", "default", "--sparsity", "0.5", "--layer", "down=0.25", "--out", out, "--json"], capsys
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["files"] == {
        "checkpoint": str(out),
        "masks": str(tmp_path / "demo.masks.safetensors"),
        "recipe": str(tmp_path / "demo.recipe.json"),
    }
    assert summary["layers"]["down"] == {"filters": 32, "pruned": 8}
    assert summary["layers"]["conv1"] == {"filters": 16, "pruned": 8}
    state, masks = load_file(out), load_file(summary["files"]["masks"])
    model = build_model("demo", "default").model
    model.load_state_dict(state, strict=True)
    for name, keep in masks.items():
        assert torch.all(state[f"{name}.weight"][~keep] == 0)
        assert int((~keep).sum()) == summary["layers"][name]["pruned"]


def test_recipe_replay_reproduces_masks(tmp_path, capsys):
    first = tmp_path / "a.pt"
    assert run_cli(["prune", "--arch", "demo", "--weights", "default", "--sparsity", "0.4", "--mode", "global", "--metric", "l1", "--out", first], capsys)[0] == 0
    second = tmp_path / "b.safetensors"
    code, _, _ = run_cli(["prune", "--arch", "demo", "--weights", "default", "--recipe", tmp_path / "a.recipe.json", "--out", second], capsys)
    assert code == 0
    a = torch.load(tmp_path / "a.masks.pt", weights_only=True)
    b = load_file(tmp_path / "b.masks.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    recipe_a = json.loads((tmp_path / "a.recipe.json").read_text())
    recipe_b = json.loads((tmp_path / "b.recipe.json").read_text())
    assert recipe_a == recipe_b and recipe_a["mode"] == "global" and recipe_a["metric"] == "l1"


def _bad_files(tmp_path):
    demo_state = build_model("demo", "default").model.state_dict()
    truncated = tmp_path / "truncated.pt"
    buffer = io.BytesIO()
    torch.save(demo_state, buffer)
    truncated.write_bytes(buffer.getvalue()[:300])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    other = tmp_path / "resnet_like.safetensors"
    other.write_bytes(save_safetensors({"conv1.weight": torch.zeros(64, 3, 7, 7)}))
    nan_state = {k: v.clone() for k, v in demo_state.items()}
    nan_state["down.weight"][0, 0, 0, 0] = float("inf")
    nan = tmp_path / "nan.safetensors"
    nan.write_bytes(save_safetensors(nan_state))
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps({"x": ("ran", print)}, protocol=2))
    return {"truncated": truncated, "text": text, "other": other, "nan": nan, "hostile": hostile}


BAD_CASES = {
    "truncated file": (["--weights", "{truncated}", "--sparsity", "0.5"], "truncated"),
    "text file": (["--weights", "{text}", "--sparsity", "0.5"], "not a readable"),
    "other architecture": (["--weights", "{other}", "--sparsity", "0.5"], "do not fit this architecture: missing keys"),
    "nan weights": (["--weights", "{nan}", "--sparsity", "0.5"], "down.weight contain NaN or Inf"),
    "code-carrying pickle": (["--weights", "{hostile}", "--sparsity", "0.5"], "refused to load"),
    "sparsity above 1": (["--weights", "default", "--sparsity", "1.5"], "outside \\[0, 1\\]"),
    "negative sparsity": (["--weights", "default", "--sparsity", "-0.1"], "outside \\[0, 1\\]"),
    "nan sparsity": (["--weights", "default", "--sparsity", "nan"], "outside \\[0, 1\\]"),
    "unknown layer": (["--weights", "default", "--sparsity", "0.5", "--layer", "conv9=0.5"], "unknown layer.*conv9"),
    "bad layer sparsity": (["--weights", "default", "--sparsity", "0.5", "--layer", "conv1=2"], "layer 'conv1'"),
    "unknown metric": (["--weights", "default", "--sparsity", "0.5", "--metric", "l3"], "invalid choice: 'l3'"),
    "missing sparsity": (["--weights", "default"], "give --sparsity"),
    "missing weights file": (["--weights", "{missing}", "--sparsity", "0.5"], "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_exits_2_with_a_short_message_and_no_file(case, tmp_path, capsys):
    files = _bad_files(tmp_path)
    files["missing"] = tmp_path / "missing.pt"
    args, message = BAD_CASES[case]
    out_dir = tmp_path / "out"
    argv = ["prune", "--arch", "demo", *[a.format(**files) for a in args], "--out", out_dir / "pruned.pt"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    "argv,message",
    [
        (["prune", "--arch", "resnet9000", "--weights", "none", "--sparsity", "0.5", "--out", "x.pt"], "unknown architecture 'resnet9000'"),
        (["prune", "--arch", "demo", "--weights", "default", "--sparsity", "0.5", "--out", "x.onnx"], "must end in .pt, .pth or .safetensors"),
    ],
)
def test_unknown_architecture_and_output_format(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and message in err and list(tmp_path.iterdir()) == []


def test_real_process_exit_code_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fpgm_core", "prune", "--arch", "demo", "--weights", str(tmp_path / "none.pt"), "--sparsity", "0.5", "--out", str(tmp_path / "o.pt")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_group_consistent_prune_follows_dependency_groups_and_replays(tmp_path, capsys):
    from fpgm_core import SparsityPlan
    from fpgm_core.groups import group_masks

    out = tmp_path / "g.safetensors"
    argv = ["prune", "--arch", "demo", "--weights", "default", "--sparsity", "0.5", "--group-consistent", "--out", out, "--json"]
    assert run_cli(argv, capsys)[0] == 0
    masks = load_file(tmp_path / "g.masks.safetensors")
    model = build_model("demo", "default").model
    expected = group_masks(model, SparsityPlan(sparsity=0.5), input_shape=(1, 1, 8, 8))
    assert masks.keys() == expected.keys() and all(torch.equal(masks[k], expected[k]) for k in masks)
    # The residual block's conv2 is coupled to the layer before the block: same channels pruned.
    assert torch.equal(masks["layer1.conv2"], masks["conv1"])
    recipe = json.loads((tmp_path / "g.recipe.json").read_text())
    assert recipe["group_consistent"] is True
    again = tmp_path / "again.pt"
    assert run_cli(["prune", "--arch", "demo", "--weights", "default", "--recipe", tmp_path / "g.recipe.json", "--out", again], capsys)[0] == 0
    replayed = torch.load(tmp_path / "again.masks.pt", weights_only=True)
    assert replayed.keys() == masks.keys() and all(torch.equal(replayed[k], masks[k]) for k in masks)


def _masks_of(path):
    return load_file(path) if str(path).endswith(".safetensors") else torch.load(path, weights_only=True)


def test_a_plain_recipe_replayed_group_consistently_writes_a_recipe_that_reproduces_its_own_masks(tmp_path, capsys):
    plain = tmp_path / "plain.pt"
    assert run_cli(["prune", "--arch", "demo", "--weights", "default", "--sparsity", "0.4", "--out", plain], capsys)[0] == 0
    grouped = tmp_path / "grouped.pt"
    argv = ["prune", "--arch", "demo", "--weights", "default", "--recipe", tmp_path / "plain.recipe.json", "--group-consistent", "--out", grouped]
    assert run_cli(argv, capsys)[0] == 0
    written = json.loads((tmp_path / "grouped.recipe.json").read_text())
    assert written["group_consistent"] is True
    grouped_masks = _masks_of(tmp_path / "grouped.masks.pt")
    assert not torch.equal(grouped_masks["layer1.conv2"], _masks_of(tmp_path / "plain.masks.pt")["layer1.conv2"]), (
        "the demo's residual groups must change this layer's mask, or the test shows nothing"
    )
    replay = tmp_path / "replay.pt"
    assert run_cli(["prune", "--arch", "demo", "--weights", "default", "--recipe", tmp_path / "grouped.recipe.json", "--out", replay], capsys)[0] == 0
    replayed = _masks_of(tmp_path / "replay.masks.pt")
    assert replayed.keys() == grouped_masks.keys() and all(torch.equal(replayed[k], grouped_masks[k]) for k in replayed)
    assert json.loads((tmp_path / "replay.recipe.json").read_text())["layers"] == written["layers"]


def test_a_failure_in_the_cost_estimate_leaves_no_file(tmp_path, capsys, monkeypatch):
    import fpgm_core.cli.prune as prune_command

    def broken(*args, **kwargs):
        raise RuntimeError("estimate failed")

    monkeypatch.setattr(prune_command, "estimate_pruned_costs", broken)
    out_dir = tmp_path / "out"
    with pytest.raises(RuntimeError, match="estimate failed"):
        run_cli(["prune", "--arch", "demo", "--weights", "default", "--sparsity", "0.3", "--out", out_dir / "p.safetensors"], capsys)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


@pytest.mark.parametrize("command", ["prune", "evaluate"])
def test_a_recipe_from_other_weights_replays_with_one_warning(command, tmp_path, capsys):
    first = tmp_path / "first.pt"
    assert run_cli(["prune", "--arch", "demo", "--weights", "default", "--sparsity", "0.3", "--out", first], capsys)[0] == 0
    random_init = tmp_path / "random.safetensors"
    random_init.write_bytes(save_safetensors(build_model("demo", "none").model.state_dict()))
    if command == "prune":
        argv = ["prune", "--arch", "demo", "--weights", random_init, "--out", tmp_path / "second.pt", "--json"]
    else:
        argv = ["evaluate", "--arch", "demo", "--weights", random_init, "--json"]
    code, out, err = run_cli([*argv, "--recipe", tmp_path / "first.recipe.json"], capsys)
    assert code == 0, err
    assert err.count("warning: the recipe was made on different weights") == 1, err
    if command == "prune":
        assert json.loads(out)["recipe_fingerprint_matches"] is False
