"""Proof on graphs nobody here wrote: resnet18, mobilenet_v2 and a timm model, exported by torch's
classic and dynamo exporters, each with BatchNorm kept and folded (BatchNorm statistics and affine
parameters randomised, so a missed BatchNorm or a misread weight shows).

For every graph: the prunable layers are the model's convs and classifier; folded BatchNorm is
reported exactly where it was folded; the graph converts to PyTorch and computes what the model
computes; FPGM scores equal the original model's (BatchNorm kept) or those of the folded filters
W·γ/σ (folded), both through the conversion and through the initializer view; the masked .onnx
has every pruned channel exactly zero in onnxruntime after its layer and after its BatchNorm —
read by adding those values as graph outputs, found here by walking the graph independently of
the engine's analysis.

One test loops over the 12 graphs; exporting is the slow part (the dynamo exporter above all).
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
import torchvision
from torch import nn

import fpgm_core
from fpgm_core.models.onnx import build_onnx
from fpgm_core.onnx_graph import masked_graph

SHAPE = (1, 3, 64, 64)  # small images keep the exports and onnxruntime runs quick; the graphs are the real ones


def _models():
    import timm

    torch.manual_seed(0)
    yield "resnet18", torchvision.models.resnet18()
    yield "mobilenet_v2", torchvision.models.mobilenet_v2()
    yield "timm mobilenetv3_small_050", timm.create_model("mobilenetv3_small_050")  # timm's BatchNormAct2d


def _randomise(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.normal_(1, 0.5, generator=generator)
                module.bias.normal_(0, 0.5, generator=generator)
    return model.eval()


def _exports(model: nn.Module) -> dict[str, bytes]:
    """The four graphs of ``model``. The dynamo exporter runs once: its folded graph is the same
    program after ``ONNXProgram.optimize()``, which is what ``optimize=True`` (its default) does."""
    sample = (torch.randn(SHAPE),)
    graphs = {}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, options in (("classic, BatchNorm kept", dict(do_constant_folding=False)), ("classic, folded", {})):
            buffer = io.BytesIO()
            torch.onnx.export(model, sample, buffer, dynamo=False, **options)
            graphs[name] = buffer.getvalue()
        program = torch.onnx.export(model, sample, dynamo=True, optimize=False)
        graphs["dynamo, BatchNorm kept"] = program.model_proto.SerializeToString()
        program.optimize()
        graphs["dynamo, folded"] = program.model_proto.SerializeToString()
    return graphs


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module | None]]:
    """Each prunable layer of the torch model with the BatchNorm that follows it (registration order)."""
    pairs, previous = [], None
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            pairs.append([module, None])
            previous = pairs[-1]
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and previous is not None and previous[1] is None:
            previous[1] = module
    return [tuple(pair) for pair in pairs]


def _folded_filters(conv: nn.Module, norm: nn.Module | None) -> torch.Tensor:
    weight = conv.weight.detach().double()
    if norm is None:
        return weight
    scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
    return weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))


def _watched_zeros(masked, masks, layer_outputs, x) -> int:
    """Run ``masked`` with every pruned layer's output and the BatchNorm directly reading it as outputs;
    assert the pruned channels are exactly zero; return how many values were checked."""
    consumers = {}
    for node in masked.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    watched = {}
    for layer, keep in masks.items():
        if bool(keep.all()):
            continue
        output = layer_outputs[layer]
        axis = -1 if next(n for n in masked.graph.node if output in n.output).op_type == "Gemm" else 1
        watched[output] = (~keep.numpy(), axis)
        for node in consumers.get(output, []):
            if node.op_type == "BatchNormalization":
                watched[node.output[0]] = (~keep.numpy(), 1)
    copy = onnx.ModelProto()
    copy.CopyFrom(masked)
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in watched)
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))
    for name, (pruned, axis) in watched.items():
        channels = np.moveaxis(values[name], axis, 0)
        assert np.all(channels[pruned] == 0), name
        assert np.any(channels[~pruned] != 0), name
    return len(watched)


def test_onnx_zoo_masks_convert_and_scores():
    rows = []
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    for model_name, model in _models():
        model = _randomise(model)
        pairs = _conv_bn_pairs(model)
        with_norm = sum(norm is not None for _, norm in pairs)
        reference = model(torch.from_numpy(x))
        for export_name, data in _exports(model).items():
            label = f"{model_name}, {export_name}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = build_onnx(data, "model.onnx")
                view = build_onnx(data, "model.onnx", convert=False)
            onnx_model = loaded.onnx
            layers = fpgm_core.prunable_layers(loaded.model)
            assert [layer.filters for layer in layers] == [conv.weight.shape[0] for conv, _ in pairs], label
            assert [layer.name for layer in layers if layer.is_output] == [layers[-1].name], label
            folded = "folded" in export_name
            if folded:
                assert onnx_model.analysis.folded is not None, label
                assert len(onnx_model.analysis.folded.layers) == with_norm, label
            else:
                assert onnx_model.analysis.folded is None, label
                assert sum(layer.batchnorm is not None for layer in onnx_model.analysis.layers) == with_norm, label
            # Converted, and computing what the model computes.
            assert onnx_model.converted, (label, onnx_model.reason)
            with torch.no_grad():
                converted_out = loaded.model(torch.from_numpy(x))
            assert torch.allclose(converted_out, reference, atol=1e-4 * max(1.0, float(reference.abs().max()))), label
            # Scores: of the trained filters where BatchNorm was kept, of W·γ/σ where it was folded.
            converted_scores = fpgm_core.layer_scores(loaded.model, "l2")
            view_scores = fpgm_core.layer_scores(view.model, "l2")
            for scores in (converted_scores, view_scores):
                for (conv, norm), ours in zip(pairs, scores.values()):
                    filters = _folded_filters(conv, norm) if folded else conv.weight.detach().double()
                    expected = fpgm_core.fpgm_scores(filters, "l2")
                    assert torch.allclose(ours, expected, rtol=2e-5, atol=1e-6 * float(expected.abs().max())), label
            # The masked graph: pruned channels exactly zero after the layer and after its BatchNorm.
            masks = fpgm_core.plan_masks(loaded.model, fpgm_core.SparsityPlan(sparsity=0.3), scores=converted_scores)
            checked = _watched_zeros(masked_graph(onnx_model, masks), masks, onnx_model.layer_outputs, x)
            assert checked == len(layers) - 1 + (0 if folded else with_norm), label
            # The view's masks are the same filters (same initializers, same scores).
            view_masks = fpgm_core.plan_masks(view.model, fpgm_core.SparsityPlan(sparsity=0.3), scores=view_scores)
            assert [m.tolist() for m in view_masks.values()] == [m.tolist() for m in masks.values()], label
            rows.append(label)
    assert len(rows) == 12
