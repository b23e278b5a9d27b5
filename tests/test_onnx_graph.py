"""fpgm_core.onnx_graph on small graphs: safe reading, analysis, the initializer view, the masked export.

Zeros are checked in onnxruntime by adding the watched values as graph outputs (the ONNX form of a
forward hook), never by reading the edited weights.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import fpgm_core
from fpgm_core import ExportError, ModelLoadError, PlanError
from fpgm_core.models.onnx import build_onnx
from fpgm_core.onnx_graph import (
    FoldedBatchNormWarning,
    InitializerView,
    OnnxNotConvertedWarning,
    analyse_graph,
    check_masked_graph,
    export_masked_onnx,
    masked_graph,
    masked_onnx_bytes,
    read_onnx,
)


def run_with(model, names, x):
    """onnxruntime outputs of ``model`` on ``x``, with the values ``names`` added as graph outputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, session.run(outputs, {session.get_inputs()[0].name: x})))


def export_onnx(model: nn.Module, shape, **kwargs) -> bytes:
    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(shape),), buffer, **kwargs)
    return buffer.getvalue()


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.normal_(1, 0.5, generator=generator)
                module.bias.normal_(0, 1, generator=generator)
    return model


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorms(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    ))


def proto_of(data: bytes):
    return onnx.load_model_from_string(data)


def make_model(nodes, inputs, outputs, initializers, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def tensor(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# --- reading ------------------------------------------------------------------------------------


def test_broken_and_hostile_files_are_refused_with_named_errors(tmp_path):
    good = export_onnx(small_cnn(), (1, 3, 16, 16), dynamo=False)
    cases = {
        b"": "empty",
        good[: len(good) // 3]: "not an ONNX model",
        b"hello, I am a text file\n" * 20: "not an ONNX model",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64: "not an ONNX model",
    }
    for data, message in cases.items():
        with pytest.raises(ModelLoadError, match=message):
            read_onnx(data, "x.onnx")
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_onnx(tmp_path / "missing.onnx")


def test_an_upload_with_external_data_is_refused_before_any_file_is_read(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 1, 1, 1])
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=str(secret))  # a path the file chooses
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"])], [value("x", [1, 1, 2, 2])], [value("y", [1, 2, 2, 2])], [weight])
    with pytest.raises(ModelLoadError, match="stored in external files"):
        build_onnx(model.SerializeToString(), "external.onnx")
    from fpgm_core.onnx_graph import inline_external_data

    with pytest.raises(ModelLoadError, match="a path, not a file uploaded with it"):
        inline_external_data(model.SerializeToString(), {"secret.bin": secret.read_bytes()}, "external.onnx")


def test_external_data_is_taken_only_from_files_uploaded_with_it(tmp_path):
    from fpgm_core.onnx_graph import external_data_files, inline_external_data

    net = small_cnn()
    path = tmp_path / "net.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=True, optimize=False)
    data, blob = path.read_bytes(), (tmp_path / "net.onnx.data").read_bytes()
    assert external_data_files(data) == ["net.onnx.data"]
    with pytest.raises(ModelLoadError, match=r"stored in external files \(net.onnx.data\).*upload them together"):
        read_onnx(data, "net.onnx")
    with pytest.raises(ModelLoadError, match="upload that file together with it"):
        inline_external_data(data, {}, "net.onnx")
    with pytest.raises(ModelLoadError, match="lies outside net.onnx.data"):
        inline_external_data(data, {"net.onnx.data": blob[: len(blob) // 2]}, "net.onnx")
    whole = inline_external_data(data, {"net.onnx.data": blob}, "net.onnx")
    loaded = build_onnx(whole, "net.onnx")
    for ours, theirs in zip(fpgm_core.layer_scores(loaded.model, "l2").values(), fpgm_core.layer_scores(net, "l2").values()):
        assert torch.allclose(ours, theirs, rtol=1e-6)


def test_a_graph_the_checker_rejects_is_named():
    model = make_model([helper.make_node("Conv", ["x", "missing_weight"], ["y"])], [value("x", [1, 1, 2, 2])],
                       [value("y", [1, 1, 2, 2])], [])
    with pytest.raises(ModelLoadError, match="ONNX checker rejects"):
        read_onnx(model.SerializeToString(), "bad.onnx")


def test_nan_weights_and_graphs_without_layers_are_refused():
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"])], [value("x", [1, 1, 2, 2])], [value("y", [1, 2, 2, 2])],
                       [tensor("w", [[[[1.0]]], [[[np.nan]]]])])
    with pytest.raises(ModelLoadError, match="NaN or Inf"):
        build_onnx(model.SerializeToString(), "nan.onnx")
    relu = make_model([helper.make_node("Relu", ["x"], ["y"])], [value("x", [1, 4])], [value("y", [1, 4])], [])
    with pytest.raises(ModelLoadError, match="nothing to prune"):
        build_onnx(relu.SerializeToString(), "relu.onnx")


# --- analysis and masking on hand-built graphs -----------------------------------------------------


def _shared_batchnorm_graph():
    """Two Conv→BN pairs whose BN parameters are one tensor behind Identity nodes (the classic exporter's dedup)."""
    rng = np.random.default_rng(0)
    inits = [tensor("w1", rng.standard_normal((4, 3, 3, 3))), tensor("w2", rng.standard_normal((4, 4, 3, 3))),
             tensor("ones", np.full(4, 1.5)), tensor("zeros", np.full(4, 0.3)), tensor("mean", rng.standard_normal(4)),
             tensor("var", rng.uniform(0.5, 2, 4))]
    nodes = [helper.make_node("Identity", [name], [f"{name}_{i}"]) for name in ("ones", "zeros") for i in (1, 2)]
    nodes += [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="/conv1/Conv"),
        helper.make_node("BatchNormalization", ["c1", "ones_1", "zeros_1", "mean", "var"], ["b1"]),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="/conv2/Conv"),
        helper.make_node("BatchNormalization", ["c2", "ones_2", "zeros_2", "mean", "var"], ["b2"]),
    ]
    return make_model(nodes, [value("x", [1, 3, 8, 8])], [value("b2", [1, 4, 8, 8])], inits)


def test_masking_one_layer_leaves_a_shared_batchnorm_tensor_alone_elsewhere():
    model = _shared_batchnorm_graph()
    loaded = build_onnx(model.SerializeToString(), "shared.onnx", convert=False)
    analysis = loaded.onnx.analysis
    assert [layer.name for layer in analysis.layers] == ["conv1/Conv", "conv2/Conv"]
    assert all(layer.batchnorm is not None for layer in analysis.layers)
    keep = torch.tensor([True, False, True, False])
    masked = masked_graph(loaded.onnx, {"conv1/Conv": keep})
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = run_with(masked, ["c1", "b1"], x)
    assert np.all(got["b1"][:, ~keep.numpy()] == 0) and np.all(got["c1"][:, ~keep.numpy()] == 0)
    assert np.any(got["b1"][:, keep.numpy()] != 0)
    # conv2's BatchNorm read the same tensors: its scale and shift must be untouched, so with conv2's
    # input recomputed from the masked graph's own r1, its BN output equals BN(conv2(r1)) unmasked.
    original = run_with(model, [], x)
    assert not np.allclose(got["b2"], original["b2"])  # conv1's pruning reaches conv2's input…
    r1 = np.maximum(got["b1"], 0)
    rerun = make_model(
        [helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c2", "ones", "zeros", "mean", "var"], ["b2"])],
        [value("r1", [1, 4, 8, 8])], [value("b2", [1, 4, 8, 8])], [t for t in model.graph.initializer if t.name != "w1"])
    session = ort.InferenceSession(rerun.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got["b2"], session.run(None, {"r1": r1})[0], rtol=1e-5, atol=1e-5)  # …but nothing else


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_filters_follow_trans_b(trans_b):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((6, 4) if trans_b else (4, 6))
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b, name="fc")],
                       [value("x", [2, 4])], [value("y", [2, 6])], [tensor("w", weight), tensor("b", rng.standard_normal(6))])
    loaded = build_onnx(model.SerializeToString(), "gemm.onnx", convert=False)
    layer = loaded.onnx.analysis.layers[0]
    assert (layer.filters, layer.is_output, layer.trans_b) == (6, True, bool(trans_b))
    rows = weight if trans_b else weight.T
    module = loaded.model.get_submodule("fc")
    assert np.array_equal(module.weight.numpy(), rows.astype(np.float32))
    scores = fpgm_core.fpgm_scores(torch.from_numpy(rows), "l2")
    assert torch.allclose(fpgm_core.layer_scores(loaded.model, "l2")["fc"], scores)
    keep = torch.tensor([True, False, True, True, False, True])
    out = run_with(masked_graph(loaded.onnx, {"fc": keep}), [], rng.standard_normal((2, 4)).astype(np.float32))["y"]
    assert np.all(out[:, ~keep.numpy()] == 0) and np.all(out[:, keep.numpy()] != 0)


def test_grouped_conv_transpose_prunes_output_channels_per_group():
    torch.manual_seed(3)
    net = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6))
    randomise_batchnorms(net)
    loaded = build_onnx(export_onnx(net, (1, 4, 5, 5), dynamo=False, do_constant_folding=False), "ct.onnx", convert=False)
    (layer,) = fpgm_core.prunable_layers(loaded.model)
    assert (layer.type, layer.filters, layer.groups) == ("ConvTranspose2d", 6, 2)
    expected = fpgm_core.layer_scores(net, "l2")["0"]
    assert torch.allclose(fpgm_core.layer_scores(loaded.model, "l2")[layer.name], expected, rtol=1e-6)
    keep = torch.tensor([True, False, True, False, True, True])
    masked = masked_graph(loaded.onnx, {layer.name: keep})
    norm = next(n for n in masked.graph.node if n.op_type == "BatchNormalization")
    out = run_with(masked, [norm.output[0]], np.random.default_rng(4).standard_normal((1, 4, 5, 5)).astype(np.float32))
    assert np.all(out[norm.output[0]][:, ~keep.numpy()] == 0) and np.all(out[norm.output[0]][:, keep.numpy()] != 0)


def test_two_heads_are_both_output_layers_and_shared_or_computed_weights_are_not_layers():
    rng = np.random.default_rng(5)
    inits = [tensor("w", rng.standard_normal((4, 3, 1, 1))), tensor("h1", rng.standard_normal((3, 4))),
             tensor("h2", rng.standard_normal((2, 4))), tensor("s", rng.standard_normal((3, 3, 1, 1))), tensor("two", [2.0])]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="stem"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "h1"], ["y1"], transB=1, name="head_a"),
        helper.make_node("Gemm", ["f", "h2"], ["y2"], transB=1, name="head_b"),
        helper.make_node("Conv", ["x", "s"], ["d1"], name="shared_1"),
        helper.make_node("Conv", ["d1", "s"], ["d2"], name="shared_2"),
        helper.make_node("Mul", ["w", "two"], ["w2"]),
        helper.make_node("Conv", ["x", "w2"], ["e"], name="computed"),
        helper.make_node("Add", ["d2", "d1"], ["y3"]),
    ]
    outputs = [value("y1", [1, 3]), value("y2", [1, 2]), value("y3", [1, 3, 4, 4]), value("e", [1, 4, 4, 4])]
    model = make_model(nodes, [value("x", [1, 3, 4, 4])], outputs, inits)
    analysis = analyse_graph(model, {t.name: t for t in model.graph.initializer})
    assert {layer.name: layer.is_output for layer in analysis.layers} == {"stem": False, "head_a": True, "head_b": True}
    assert any("shared_1" in s and "shared" in s for s in analysis.skipped)
    assert any("computed" in s and "computed" in s.split("(")[1] for s in analysis.skipped)


# --- folded BatchNorm --------------------------------------------------------------------------------


def test_folded_batchnorm_is_detected_from_each_exporter_s_fingerprint_and_not_where_kept():
    net = small_cnn()
    kept_classic = analyse_graph(proto_of(export_onnx(net, (1, 3, 16, 16), dynamo=False, do_constant_folding=False)))
    folded_classic = analyse_graph(proto_of(export_onnx(net, (1, 3, 16, 16), dynamo=False)))
    assert kept_classic.folded is None and sum(layer.batchnorm is not None for layer in kept_classic.layers) == 2
    assert folded_classic.folded is not None and len(folded_classic.folded.layers) == 2
    assert "onnx::Conv_<n>" in folded_classic.folded.evidence[0] and "do_constant_folding=False" in folded_classic.folded.message()
    # Another tool's graph that keeps the BatchNorm's name in the folded node's tensors.
    model = make_model([helper.make_node("Conv", ["x", "conv1_bn/weights", "conv1_bn/FusedBatchNormV3"], ["y"], name="model/conv1")],
                       [value("x", [1, 3, 4, 4])], [value("y", [1, 2, 4, 4])],
                       [tensor("conv1_bn/weights", np.ones((2, 3, 1, 1))), tensor("conv1_bn/FusedBatchNormV3", [0.0, 1.0])])
    other = analyse_graph(model)
    assert other.folded is None  # the only layer is the output: nothing before a classifier to warn about
    model.graph.node.append(helper.make_node("Gemm", ["y", "w"], ["z"], transB=1))
    # (a layer after it makes the Conv a hidden layer)
    model.graph.initializer.append(tensor("w", np.ones((3, 2))))
    model.graph.output[0].CopyFrom(value("z", [1, 3]))
    analysis = analyse_graph(model)
    assert analysis.folded is not None and "BatchNorm's name" in analysis.folded.evidence[0]
    # A graph without BatchNorm ever (VGG-like) is not flagged.
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 12 * 12, 2))
    assert analyse_graph(proto_of(export_onnx(plain, (1, 3, 16, 16), dynamo=False))).folded is None


def test_loading_a_folded_graph_warns_and_says_so():
    with pytest.warns(FoldedBatchNormWarning, match="folded into 2 of 2 layers"):
        loaded = build_onnx(export_onnx(small_cnn(), (1, 3, 16, 16), dynamo=False), "folded.onnx")
    assert loaded.onnx.analysis.folded is not None


# --- the view and the conversion -----------------------------------------------------------------


def _gelu_net() -> nn.Module:
    """Exported by the dynamo exporter, GELU is the opset-20 op Gelu, which onnx2torch lacks."""
    torch.manual_seed(6)
    return randomise_batchnorms(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ), seed=6)


@pytest.fixture(scope="module")
def gelu_onnx() -> bytes:
    return export_onnx(_gelu_net(), (1, 3, 32, 32), dynamo=True, optimize=False)


def test_an_unconvertible_graph_names_its_op_and_the_view_computes_what_the_graph_computes(gelu_onnx):
    net = _gelu_net().eval()
    with pytest.warns(OnnxNotConvertedWarning, match="Gelu"):
        loaded = build_onnx(gelu_onnx, "gelu.onnx")
    assert not loaded.onnx.converted and "no converter for Gelu (opset 20)" in loaded.onnx.reason
    view = loaded.model
    assert isinstance(view, InitializerView)
    layers = fpgm_core.prunable_layers(view)
    assert [layer.type for layer in layers] == ["Conv2d", "Conv2d", "Linear"] and layers[-1].is_output
    # Scores read the initializers: the same as the torch model's.
    for ours, theirs in zip(fpgm_core.layer_scores(view, "l2").values(), fpgm_core.layer_scores(net, "l2").values()):
        assert torch.allclose(ours, theirs, rtol=1e-6)
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(view(x), net(x), atol=1e-5)
    assert fpgm_core.count_flops(view, loaded.input_shape) == fpgm_core.count_flops(net, (1, 3, 32, 32))
    # A masked copy (the engine's apply_masks) computes the masked graph; hooks see pruned channels at zero.
    masks = fpgm_core.plan_masks(view, fpgm_core.SparsityPlan(sparsity=0.5))
    pruned_view = fpgm_core.apply_masks(view, masks)
    seen = {}
    conv, norm = [name for name, _ in pruned_view.named_modules()][1:3]  # the first Conv and the BatchNorm after it
    assert isinstance(pruned_view.get_submodule(norm), nn.BatchNorm2d)
    hooks = [pruned_view.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
             for name in (conv, norm)]
    try:
        out = pruned_view(x)
    finally:
        for hook in hooks:
            hook.remove()
    pruned = ~masks[conv]
    assert pruned.any() and torch.all(seen[conv][:, pruned] == 0) and torch.all(seen[norm][:, pruned] == 0)
    assert torch.any(seen[norm][:, ~pruned] != 0)
    masked = masked_graph(loaded.onnx, masks)  # exported at batch 1: the view ran one image at a time too
    reference = np.concatenate([next(iter(run_with(masked, [], x[i:i + 1].numpy()).values())) for i in range(len(x))])
    assert torch.allclose(out, torch.from_numpy(reference), atol=1e-6)
    assert torch.equal(view.get_submodule("node_conv2d").weight, loaded.model.get_submodule("node_conv2d").weight)  # untouched


def test_a_conversion_that_computes_something_else_is_not_used(monkeypatch, gelu_onnx):
    import onnx2torch

    data = export_onnx(small_cnn(), (1, 3, 16, 16), dynamo=False, do_constant_folding=False)
    real_convert = onnx2torch.convert

    def off_by_a_little(*args, **kwargs):
        module = real_convert(*args, **kwargs)
        with torch.no_grad():
            next(m for m in module.modules() if isinstance(m, nn.Linear)).bias.add_(0.1)
        return module

    monkeypatch.setattr(onnx2torch, "convert", off_by_a_little)
    with pytest.warns(OnnxNotConvertedWarning):
        loaded = build_onnx(data, "wrong.onnx")
    assert not loaded.onnx.converted and "differ from onnxruntime's" in loaded.onnx.reason


# --- the masked export and its check -------------------------------------------------------------


def test_the_check_catches_a_batchnorm_left_unmasked(monkeypatch):
    loaded = build_onnx(export_onnx(small_cnn(), (1, 3, 16, 16), dynamo=False, do_constant_folding=False), "cnn.onnx")
    masks = fpgm_core.plan_masks(loaded.model, fpgm_core.SparsityPlan(sparsity=0.5))
    checked = check_masked_graph(masked_graph(loaded.onnx, masks), loaded.onnx, masks, loaded.input_shape)
    assert set(checked.values()) == {4, 6} and len(checked) == 4  # two layers, each with its BatchNorm
    # The same graph with the BatchNorm edits dropped: the pruned channels come out as B − mean·scale/σ.
    import fpgm_core.onnx_graph.masked as masked_module
    from dataclasses import replace

    layers = tuple(replace(layer, batchnorm=None) for layer in loaded.onnx.analysis.layers)
    unaware = replace(loaded.onnx, analysis=replace(loaded.onnx.analysis, layers=layers))
    with pytest.raises(ExportError, match=r"after its BatchNormalization\): pruned channels are not zero"):
        check_masked_graph(masked_module.masked_graph(unaware, masks), loaded.onnx, masks, loaded.input_shape)


def test_export_writes_graph_masks_and_recipe_or_nothing(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import fpgm_core.onnx_graph.masked as masked_module

    loaded = build_onnx(export_onnx(small_cnn(), (1, 3, 16, 16), dynamo=False, do_constant_folding=False), "cnn.onnx")
    plan = fpgm_core.SparsityPlan(sparsity=0.5)
    masks = fpgm_core.plan_masks(loaded.model, plan)
    layers = fpgm_core.prunable_layers(loaded.model)
    recipe = fpgm_core.make_recipe(loaded.model, plan, fpgm_core.plan_counts(layers, plan), layers, arch="cnn.onnx", weights="default")
    files = export_masked_onnx(loaded.onnx, masks, recipe, tmp_path / "out.onnx", loaded.input_shape)
    assert files.checkpoint.read_bytes() == masked_onnx_bytes(loaded.onnx, masks, loaded.input_shape)
    assert {k: v.tolist() for k, v in load_file(files.masks).items()} == {k: v.tolist() for k, v in masks.items()}
    monkeypatch.setattr(masked_module, "check_masked_graph", lambda *a, **k: (_ for _ in ()).throw(ExportError("boom")))
    with pytest.raises(ExportError, match="boom"):
        export_masked_onnx(loaded.onnx, masks, recipe, tmp_path / "failed" / "x.onnx", loaded.input_shape)
    assert not (tmp_path / "failed").exists()
    with pytest.raises(PlanError, match="unknown layer 'conv9'"):
        masked_graph(loaded.onnx, {"conv9": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ExportError, match="must end in .onnx"):
        export_masked_onnx(loaded.onnx, masks, recipe, tmp_path / "x.pt", loaded.input_shape)
