"""``python -m fpgm_core finetune`` / ``finetune-sweep`` and ``slim --masks``: files, replay, bad input."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import fpgm_core
from cli_runner import run_cli
from fpgm_core.demo import digits_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BASE = ["finetune", "--arch", "demo", "--weights", "default", "--threads", "1"]


def digit_zip(labels: dict[str, range] | None = None, flat: bool = False, count: int = 40) -> bytes:
    """Real digits as PNGs: ``CLASS/i.png`` per class folder (folder names may lie), or a flat folder."""
    split = digits_split(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(count):
            pixels = (split.train_x[i, 0].numpy() * 255).astype(np.uint8)
            image = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(image, "PNG")
            folder = "" if flat else (next((name for name, r in (labels or {}).items() if i in r), None) or str(int(split.train_y[i])))
            archive.writestr(f"{folder}/{i}.png" if folder else f"{i}.png", image.getvalue())
    return buffer.getvalue()


def test_finetune_writes_a_strict_checkpoint_masks_recipe_and_history(tmp_path, capsys):
    out = tmp_path / "ft.safetensors"
    code, stdout, err = run_cli(BASE + ["--sparsity", "0.3", "--data", "demo", "--epochs", "2", "--out", out, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    # One progress line per epoch (and one for the pruned model before training) on stderr.
    lines = err.strip().splitlines()
    assert lines[0].startswith("pruned 45 filters") and [line.split()[1] for line in lines[1:]] == ["1/2", "2/2"]
    files = summary["files"]
    model = fpgm_core.build_model("demo", "none").model
    model.load_state_dict(load_file(files["checkpoint"]), strict=True)
    masks = load_file(files["masks"])
    expected = fpgm_core.plan_masks(fpgm_core.build_model("demo", "default").model, fpgm_core.SparsityPlan(sparsity=0.3))
    modules = dict(model.named_modules())
    for name, keep in expected.items():
        assert torch.equal(masks[name], keep)
        assert bool(modules[name].weight.detach()[~keep].eq(0).all())
    recipe = fpgm_core.read_recipe(files["recipe"])
    assert recipe["finetune"]["settings"]["epochs"] == 2 and recipe["finetune"]["threads"] == 1
    assert recipe["finetune"]["masks_file"] == "ft.masks.safetensors"
    assert recipe["finetune"]["result"]["fingerprint"] == fpgm_core.model_fingerprint(model)
    history = json.loads((tmp_path / "ft.history.json").read_text())
    assert [entry["epoch"] for entry in history["history"]] == [0, 1, 2]
    assert history["history"][-1]["top1"] == summary["top1"] > summary["untrained_top1"]


def test_the_recipe_replays_to_the_same_weights_and_prune_replays_the_untrained_masks(tmp_path, capsys):
    first = tmp_path / "first.safetensors"
    code, _, err = run_cli(BASE + ["--sparsity", "0.4", "--data", "demo", "--epochs", "1", "--seed", "2",
                                   "--schedule", "per-epoch", "--out", first, "--quiet"], capsys)
    assert code == 0, err
    again = tmp_path / "again.safetensors"
    # No settings flags: every one comes from the recipe.
    code, _, err = run_cli(["finetune", "--arch", "demo", "--weights", "default", "--recipe", tmp_path / "first.recipe.json",
                            "--data", "demo", "--out", again, "--quiet"], capsys)
    assert code == 0, err
    assert "warning" not in err
    assert first.read_bytes() == again.read_bytes()
    pruned = tmp_path / "pruned.safetensors"
    code, _, err = run_cli(["prune", "--arch", "demo", "--weights", "default", "--recipe", tmp_path / "first.recipe.json",
                            "--out", pruned], capsys)
    assert code == 0, err
    assert torch.equal(load_file(str(tmp_path / "pruned.masks.safetensors"))["down"],
                       fpgm_core.plan_masks(fpgm_core.build_model("demo", "default").model, fpgm_core.SparsityPlan(sparsity=0.4))["down"])


def test_a_group_consistent_fine_tune_slims_by_its_masks_to_equal_outputs(tmp_path, capsys):
    out = tmp_path / "g.safetensors"
    code, _, err = run_cli(BASE + ["--sparsity", "0.4", "--group-consistent", "--data", "demo", "--epochs", "1",
                                   "--out", out, "--quiet"], capsys)
    assert code == 0, err
    fine_tuned = fpgm_core.build_model("demo", out).model
    for how in (["--masks", tmp_path / "g.masks.safetensors"], ["--recipe", tmp_path / "g.recipe.json"]):
        slim_out = tmp_path / "g.pt2"
        code, stdout, err = run_cli(["slim", "--arch", "demo", "--weights", out, *how, "--out", slim_out,
                                     "--repeats", "0", "--json"], capsys)
        assert code == 0, err
        summary = json.loads(stdout)
        assert summary["mode"] == "masks" and summary["verification"]["passed"]
        program = torch.export.load(str(slim_out)).module()
        images = digits_split(0).test_x
        with torch.no_grad():
            slimmed, masked = program(images), fine_tuned(images)
        assert float((slimmed - masked).abs().max()) <= 1e-5 * float(masked.abs().max())
        masks = load_file(str(tmp_path / "g.masks.safetensors"))
        assert summary["pruned_channels"] == sum(int((~keep).sum()) for name, keep in masks.items()
                                                 if name in ("conv1", "layer1.conv1", "down", "layer2.conv1"))


def test_slim_refuses_masks_that_are_not_group_consistent_and_a_recipe_without_its_masks(tmp_path, capsys):
    out = tmp_path / "plain.safetensors"
    assert run_cli(BASE + ["--sparsity", "0.3", "--data", "demo", "--epochs", "1", "--out", out, "--quiet"], capsys)[0] == 0
    code, _, err = run_cli(["slim", "--arch", "demo", "--weights", out, "--masks", tmp_path / "plain.masks.safetensors",
                            "--out", tmp_path / "s.pt2", "--repeats", "0"], capsys)
    assert code == 2 and "--group-consistent" in err and not (tmp_path / "s.pt2").exists()
    (tmp_path / "plain.masks.safetensors").unlink()
    code, _, err = run_cli(["slim", "--arch", "demo", "--weights", out, "--recipe", tmp_path / "plain.recipe.json",
                            "--out", tmp_path / "s.pt2", "--repeats", "0"], capsys)
    assert code == 2 and "give --masks" in err and err.count("error:") == 1


def test_distillation_alone_fine_tunes_on_a_zip_of_unlabelled_images(tmp_path, capsys):
    data = tmp_path / "unlabelled.zip"
    data.write_bytes(digit_zip(flat=True, count=60))
    out = tmp_path / "d.safetensors"
    code, stdout, err = run_cli(BASE + ["--sparsity", "0.3", "--data", data, "--distill", "4", "--distill-weight", "1",
                                        "--epochs", "2", "--out", out, "--json", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["top1"] is None and summary["data"]["split"] == "random"
    code, _, err = run_cli(BASE + ["--sparsity", "0.3", "--data", data, "--epochs", "1", "--out", out], capsys)
    assert code == 2 and "no labels" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "demo", "--epochs", "0"], "epochs must be a whole number ≥ 1"),
        (["--data", "demo", "--lr", "nan"], "learning rate must be a finite number"),
        (["--data", "ZIP_WITHOUT_IMAGES"], "no images found"),
        (["--data", "ZIP_BAD_LABELS"], "class index 12 is out of range: the model has 10 outputs"),
        (["--data", "missing.zip"], "neither 'demo' nor a zip file"),
        (["--data", "demo", "--regrow"], "per-epoch"),
        (["--data", "demo", "--threads", "0"], "--threads"),
    ],
)
def test_bad_input_exits_2_with_one_error_line_and_writes_nothing(tmp_path, capsys, extra, message):
    no_images = tmp_path / "empty.zip"
    with zipfile.ZipFile(no_images, "w") as archive:
        archive.writestr("cats/readme.txt", "no pictures here")
    bad_labels = tmp_path / "labels.zip"
    bad_labels.write_bytes(digit_zip({"12": range(0, 5)}))
    extra = [str(no_images) if e == "ZIP_WITHOUT_IMAGES" else str(bad_labels) if e == "ZIP_BAD_LABELS"
             else str(tmp_path / e) if e == "missing.zip" else e for e in extra]
    out = tmp_path / "out" / "ft.safetensors"
    code, stdout, err = run_cli(BASE + ["--sparsity", "0.3", *extra, "--out", out], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert not (tmp_path / "out").exists()


def test_finetune_sweep_prints_each_criterion_before_and_after_training(capsys):
    code, stdout, err = run_cli(["finetune-sweep", "--arch", "demo", "--weights", "default", "--data", "demo",
                                 "--sparsities", "0.5", "--criteria", "fpgm-l2,random", "--seeds", "1", "--epochs", "1",
                                 "--threads", "1", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    rows = {row["criterion"]: row for row in summary["summary"]}
    assert set(rows) == {"fpgm-l2", "random"}
    for row in rows.values():
        assert row["top1"] > row["pruned_top1"] + 0.3 and row["flops_removed"] > 0.4
    assert err.count("[") == 3  # a line as it starts, then one per point


@pytest.mark.parametrize("spec, message", [("bogus", "unknown executor 'bogus'"), ("processes:0", "at least one process")])
def test_finetune_sweep_refuses_a_bad_executor_before_any_work(spec, message, capsys):
    code, stdout, err = run_cli(["finetune-sweep", "--arch", "demo", "--weights", "default", "--data", "demo",
                                 "--epochs", "1", "--executor", spec], capsys)
    assert code == 2 and stdout == "" and err.startswith("error: ") and message in err and err.count("\n") == 1
