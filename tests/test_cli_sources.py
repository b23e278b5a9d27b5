"""CLI on every source: ``--arch timm:NAME``, ``--arch FILE.onnx`` and ``--arch package.module:callable``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import factory_models
from cli_runner import run_cli
from fpgm_core import build_model

ROOT = Path(__file__).resolve().parents[1]
TIMM_ARCH = "timm:mobilenetv3_small_050"


def export_onnx(model: nn.Module, shape, path: Path, **options) -> Path:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(shape),), str(path), **options)
    return path


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    """The seeded factory model (factory_models:small_net) exported with BatchNorm kept."""
    model = build_model("factory_models:small_net").model
    return export_onnx(model, (1, 3, 16, 16), tmp_path_factory.mktemp("onnx") / "small.onnx",
                       dynamo=False, do_constant_folding=False, dynamic_axes={"input": {0: "batch"}}, input_names=["input"])


@pytest.fixture(scope="module")
def gelu_onnx(tmp_path_factory) -> Path:
    """A graph onnx2torch cannot convert (the opset-20 Gelu of the dynamo exporter)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    return export_onnx(model, (1, 3, 16, 16), tmp_path_factory.mktemp("gelu") / "gelu.onnx", dynamo=True, optimize=False)


def pruned_channels_are_zero(graph_path: Path, masks_path: Path, shape) -> int:
    """Run the written graph with every pruned layer's output (and a BatchNorm reading it) as outputs."""
    model = onnx.load(str(graph_path))
    masks = load_file(str(masks_path))
    layer_outputs = {}
    for node in model.graph.node:
        name = (node.name.replace(".", "/") or node.op_type).lstrip("/")
        layer_outputs[name] = node.output[0]
    consumers = {}
    for node in model.graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    watched = {}
    for layer, keep in masks.items():
        output = layer_outputs[layer]
        watched[output] = ~keep.numpy()
        for node in consumers.get(output, []):
            if node.op_type == "BatchNormalization":
                watched[node.output[0]] = ~keep.numpy()
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in watched)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    values = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))
    for name, pruned in watched.items():
        channels = np.moveaxis(values[name], -1 if values[name].ndim == 2 else 1, 0)
        assert np.all(channels[pruned] == 0), name
    return sum(int(p.sum()) for p in watched.values())


# --- timm --------------------------------------------------------------------------------------


def test_timm_layers_and_prune_with_a_strict_reload(tmp_path, capsys):
    import timm

    code, out, err = run_cli(["layers", "--arch", TIMM_ARCH, "--json"], capsys)
    assert code == 0, err
    listing = json.loads(out)
    assert listing["arch"] == TIMM_ARCH and listing["input_shape"] == [1, 3, 224, 224]
    out_path = tmp_path / "mnv3.safetensors"
    code, out, err = run_cli(["prune", "--arch", TIMM_ARCH, "--weights", "none", "--sparsity", "0.3", "--out", out_path, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["pruned_filters"] > 0
    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    model.load_state_dict(load_file(str(out_path)), strict=True)
    recipe = json.loads((tmp_path / "mnv3.recipe.json").read_text())
    assert recipe["model"]["arch"] == TIMM_ARCH
    code, _, err = run_cli(["prune", "--arch", TIMM_ARCH, "--weights", "none", "--recipe", tmp_path / "mnv3.recipe.json",
                            "--out", tmp_path / "again.safetensors"], capsys)
    assert code == 0, err
    again = load_file(str(tmp_path / "again.safetensors"))
    assert all(torch.equal(again[k], v) for k, v in load_file(str(out_path)).items())


def test_timm_pretrained_offline_is_one_error_line_and_no_file(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(["prune", "--arch", TIMM_ARCH, "--weights", "default", "--sparsity", "0.3", "--out", tmp_path / "o.pt"], capsys)
    assert code == 2 and err.startswith("error: pretrained weights for timm:mobilenetv3_small_050 are not in the local Hugging Face cache")
    assert "Traceback" not in err and not (tmp_path / "o.pt").exists()


# --- your own code ------------------------------------------------------------------------------


def test_factory_prune_writes_a_checkpoint_for_your_model(tmp_path, capsys):
    out_path = tmp_path / "mine.pt"
    code, out, err = run_cli(["prune", "--arch", "factory_models:small_net", "--weights", "default", "--sparsity", "0.5",
                              "--out", out_path, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["layers"] == {"features.0": {"filters": 12, "pruned": 6}, "features.3": {"filters": 16, "pruned": 8}}
    model = factory_models.SmallNet()
    model.load_state_dict(torch.load(out_path, weights_only=True), strict=True)
    assert int((model.features[0].weight.flatten(1).abs().sum(1) == 0).sum()) == 6


def test_factory_flags_errors(tmp_path, capsys):
    code, _, err = run_cli(["layers", "--arch", "factory_models:no_shape"], capsys)
    assert code == 2 and "--input-shape" in err
    code, out, err = run_cli(["layers", "--arch", "factory_models:no_shape", "--input-shape", "1,3,8,8", "--json"], capsys)
    assert code == 0 and json.loads(out)["input_shape"] == [1, 3, 8, 8], err
    code, _, err = run_cli(["layers", "--arch", "factory_models:small_net", "--input-shape", "1,3,a"], capsys)
    assert code == 2 and "expected integers" in err
    code, _, err = run_cli(["prune", "--arch", "factory_models:small_net", "--sparsity", "0.3", "--out", tmp_path / "o.pt"], capsys)
    assert code == 2 and "give --weights" in err and not (tmp_path / "o.pt").exists()


def test_a_real_process_imports_the_factory_it_is_named(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    result = subprocess.run([sys.executable, "-m", "fpgm_core", "layers", "--arch", "factory_models:small_net", "--json"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [layer["name"] for layer in json.loads(result.stdout)["layers"]] == ["features.0", "features.3", "head.2"]


# --- ONNX -------------------------------------------------------------------------------------------


def test_onnx_prune_writes_the_masked_graph_and_the_recipe_replays_it(small_onnx, tmp_path, capsys):
    out_path = tmp_path / "small-pruned.onnx"
    code, out, err = run_cli(["prune", "--arch", small_onnx, "--sparsity", "0.5", "--out", out_path, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["files"]["checkpoint"] == str(out_path)
    assert pruned_channels_are_zero(out_path, tmp_path / "small-pruned.masks.safetensors", (2, 3, 16, 16)) == 2 * (6 + 8)
    code, _, err = run_cli(["prune", "--arch", small_onnx, "--recipe", tmp_path / "small-pruned.recipe.json",
                            "--out", tmp_path / "again.onnx"], capsys)
    assert code == 0 and "warning" not in err, err
    assert (tmp_path / "again.onnx").read_bytes() == out_path.read_bytes()
    code, out, err = run_cli(["layers", "--arch", small_onnx, "--json"], capsys)
    assert json.loads(out)["onnx"]["converted"] is True and json.loads(out)["onnx"]["folded_batchnorm_layers"] == []


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--out", "{tmp}/x.pt"], "must end in .onnx for an ONNX model"),
        (["--weights", "{tmp}/w.pt", "--out", "{tmp}/x.onnx"], "carries its own weights"),
        (["--input-shape", "1,4,16,16", "--out", "{tmp}/x.onnx"], "dimension 1 of the graph's input"),
    ],
)
def test_onnx_bad_flags_exit_2_and_write_nothing(small_onnx, tmp_path, capsys, extra, message):
    argv = ["prune", "--arch", small_onnx, "--sparsity", "0.3", *[a.format(tmp=tmp_path) for a in extra]]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_folded_batchnorm_is_a_warning_line(tmp_path, capsys):
    path = export_onnx(build_model("factory_models:small_net").model, (1, 3, 16, 16), tmp_path / "folded.onnx", dynamo=False)
    code, out, err = run_cli(["layers", "--arch", path, "--json"], capsys)
    assert code == 0
    assert "warning: BatchNorm looks folded into 2 of 2 layers" in err and "do_constant_folding=False" in err
    assert len(json.loads(out)["onnx"]["folded_batchnorm_layers"]) == 2


def test_onnx_slim_works_where_it_converted_and_names_the_op_where_not(small_onnx, gelu_onnx, tmp_path, capsys):
    code, out, err = run_cli(["slim", "--arch", small_onnx, "--sparsity", "0.5", "--out", tmp_path / "slim.pt2",
                              "--repeats", "0", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["params_after"] < json.loads(out)["params_before"]
    code, _, err = run_cli(["slim", "--arch", gelu_onnx, "--sparsity", "0.5", "--out", tmp_path / "no.pt2"], capsys)
    assert code == 2 and "no converter for Gelu (opset 20)" in err and "prune --out FILE.onnx" in err
    assert not (tmp_path / "no.pt2").exists()
    code, _, err = run_cli(["prune", "--arch", gelu_onnx, "--sparsity", "0.5", "--group-consistent", "--out", tmp_path / "g.onnx"], capsys)
    assert code == 2 and "--group-consistent needs the graph in PyTorch" in err
    code, _, err = run_cli(["prune", "--arch", gelu_onnx, "--sparsity", "0.5", "--out", tmp_path / "g.onnx"], capsys)
    assert code == 0 and "warning: gelu.onnx: not converted to PyTorch" in err
    assert pruned_channels_are_zero(tmp_path / "g.onnx", tmp_path / "g.masks.safetensors", (1, 3, 16, 16)) > 0


def test_evaluate_an_onnx_graph_as_its_own_pytorch_model(small_onnx, tmp_path, capsys):
    rng = np.random.default_rng(0)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for label in range(4):
            for index in range(3):
                image = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(image, "PNG")
                zf.writestr(f"{label}/{index}.png", image.getvalue())
    results = []
    for arch in (small_onnx, "factory_models:small_net"):
        code, out, err = run_cli(["evaluate", "--arch", arch, "--data", archive, "--sparsity", "0.3", "--json"], capsys)
        assert code == 0, err
        results.append(json.loads(out))
    onnx_result, torch_result = results
    assert onnx_result["n"] == 12
    for key in ("top1", "agreement", "baseline_top1", "pruned_filters"):
        assert onnx_result[key] == torch_result[key], key
    assert onnx_result["kl"] == pytest.approx(torch_result["kl"], abs=1e-6)


def _class_zip(path: Path, classes, count: int = 6, size: int = 20) -> Path:
    """Random RGB images in one folder per class name."""
    rng = np.random.default_rng(1)
    with zipfile.ZipFile(path, "w") as zf:
        for name in classes:
            for index in range(count):
                image = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(image, "PNG")
                zf.writestr(f"{name}/{index}.png", image.getvalue())
    return path


def test_finetune_your_own_model_and_an_onnx_graph_on_a_zip(small_onnx, gelu_onnx, tmp_path, capsys):
    # Class folders named by the model's own categories, images at another size: the fine-tune
    # reads them with the model's input shape and class names, as evaluate does.
    data = _class_zip(tmp_path / "pets.zip", factory_models.SmallNet.categories)
    for arch, weights, stem in (("factory_models:small_net", ["--weights", "default"], "mine"), (small_onnx, [], "graph")):
        out = tmp_path / f"{stem}.safetensors"
        code, stdout, err = run_cli(["finetune", "--arch", arch, *weights, "--sparsity", "0.5", "--data", data, "--epochs", "1",
                                     "--threads", "1", "--out", out, "--json", "--quiet"], capsys)
        assert code == 0, err
        summary = json.loads(stdout)
        assert summary["pruned_filters"] == 6 + 8 and summary["data"]["train"] + summary["data"]["val"] == 24
        masks = load_file(str(tmp_path / f"{stem}.masks.safetensors"))
        state = load_file(str(out))
        if stem == "mine":
            model = factory_models.SmallNet()
            model.load_state_dict(state, strict=True)
            assert bool(model.features[0].weight.detach()[~masks["features.0"]].eq(0).all())
        else:  # the converted graph's own module names, as the plan reads them
            assert all(bool(state[f"{name}.weight"][~keep].eq(0).all()) for name, keep in masks.items())
    code, _, err = run_cli(["finetune", "--arch", gelu_onnx, "--sparsity", "0.5", "--data", data, "--epochs", "1",
                            "--out", tmp_path / "no.safetensors"], capsys)
    assert code == 2 and "fine-tuning needs the graph in PyTorch" in err and "no converter for Gelu" in err
    assert not list(tmp_path.glob("no.*"))
