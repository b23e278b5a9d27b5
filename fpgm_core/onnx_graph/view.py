"""An ``nn.Module`` view of an ONNX graph that did not convert to PyTorch.

The view holds one real torch layer per prunable node (``nn.Conv2d``, ``nn.ConvTranspose2d``,
``nn.Linear``, …) with that node's initializers as its parameters, and one ``nn.BatchNorm`` per
BatchNormalization directly after it, registered right after its layer and named as onnx2torch
would name them. Everything that reads a model through ``nn.Module`` therefore works unchanged:
``prunable_layers``, ``layer_filters``, FPGM scores, plans, recipes and fingerprints.

Its ``forward`` runs the graph itself in onnxruntime, with the view's *current* parameters
substituted for the initializers (so a masked copy made by ``apply_masks`` computes the masked
graph), and replays each of its torch layers on the input onnxruntime computed for that node. The
replays are what ``torch.utils.flop_counter`` counts and what forward hooks see (real inputs,
real outputs per layer); the returned tensor is onnxruntime's graph output. What the view cannot
do is what needs the graph *in* PyTorch: autograd, torch.export, fx tracing, Torch-Pruning's
dependency graph (slimming).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import FpgmError
from .analysis import OnnxLayer, module_names, tensor_array
from .editing import with_inputs, with_outputs
from .model import OnnxModel, declared_input
from .runtime import inference_session, run

__all__ = ["InitializerView", "layer_module"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_PARAMETER_DTYPES = (np.float16, np.float32, np.float64)

# One cached onnxruntime session per view, valid while its parameters are unchanged.
_SESSIONS: "weakref.WeakKeyDictionary[InitializerView, tuple[tuple, Any]]" = weakref.WeakKeyDictionary()
_SESSIONS_LOCK = threading.Lock()


def _tensor(array: np.ndarray) -> Tensor:
    if array.dtype not in _PARAMETER_DTYPES:
        array = array.astype(np.float32)
    return torch.from_numpy(np.array(array, copy=True))


def _auto_pad(layer: OnnxLayer) -> str:
    value = layer.attributes.get("auto_pad", b"NOTSET")
    return value.decode() if isinstance(value, bytes) else str(value)


def _same_padding(inputs: Tensor, module: nn.Module, upper: bool) -> Tensor:
    """Pad as ONNX's SAME_UPPER / SAME_LOWER: output size ceil(input / stride)."""
    amounts: list[int] = []
    for size, kernel, stride, dilation in reversed(list(zip(inputs.shape[2:], module.kernel_size, module.stride, module.dilation))):
        total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        small, large = total // 2, total - total // 2
        amounts += [small, large] if upper else [large, small]
    return F.pad(inputs, amounts)


def _spatial_padding(layer: OnnxLayer, rank: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(padding for the torch layer, explicit F.pad amounts when ONNX pads are asymmetric)."""
    attributes = layer.attributes
    if _auto_pad(layer) in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        return (0,) * rank, None  # SAME is applied per input size in the replay; VALID pads nothing
    pads = list(attributes.get("pads", [0] * 2 * rank))
    begin, end = pads[:rank], pads[rank:]
    if begin == end:
        return tuple(begin), None
    # F.pad takes (last dim begin, last dim end, previous dim begin, …).
    amounts = []
    for b, e in zip(reversed(begin), reversed(end)):
        amounts += [b, e]
    return (0,) * rank, tuple(amounts)


def layer_module(layer: OnnxLayer, weight: np.ndarray, bias: np.ndarray | None) -> nn.Module:
    """The torch layer computing what the ONNX node ``layer`` computes, holding its weights."""
    if layer.op_type == "Gemm":
        matrix = weight if layer.trans_b else weight.T
        module: nn.Module = nn.Linear(matrix.shape[1], matrix.shape[0], bias=bias is not None)
        module.weight = nn.Parameter(_tensor(matrix), requires_grad=False)
    else:
        rank = len(layer.weight_shape) - 2
        attributes = layer.attributes
        padding, extra = _spatial_padding(layer, rank)
        common: dict[str, Any] = dict(
            kernel_size=tuple(layer.weight_shape[2:]),
            stride=tuple(attributes.get("strides", [1] * rank)),
            dilation=tuple(attributes.get("dilations", [1] * rank)),
            groups=layer.groups,
            bias=bias is not None,
        )
        if layer.op_type == "Conv":
            module = _CONV[rank](layer.weight_shape[1] * layer.groups, layer.weight_shape[0], padding=padding, **common)
        else:
            module = _CONV_TRANSPOSE[rank](
                layer.weight_shape[0], layer.weight_shape[1] * layer.groups, padding=padding,
                output_padding=tuple(attributes.get("output_padding", [0] * rank)), **common,
            )
        module.weight = nn.Parameter(_tensor(weight), requires_grad=False)
        module.onnx_input_pad = extra  # asymmetric ONNX pads, applied before the replay
        auto_pad = _auto_pad(layer)
        module.onnx_same_pad = auto_pad if auto_pad.startswith("SAME") and layer.op_type == "Conv" else None
    if bias is not None:
        module.bias = nn.Parameter(_tensor(bias), requires_grad=False)
    return module


class InitializerView(nn.Module):
    """Torch layers over an ONNX graph's initializers, with onnxruntime computing the graph (see the module doc)."""

    def __init__(self, onnx_model: OnnxModel) -> None:
        super().__init__()
        proto = onnx_model.proto
        graph = proto.graph
        sources = onnx_model.constants
        names = module_names(graph)
        self.onnx_model = onnx_model
        self.input_name, self.declared_dims, self.input_dtype = declared_input(proto)
        # (module name, node index, ONNX input names the module holds, the node input the replay reads)
        self._slots: list[tuple[str, int, tuple[str, ...], str]] = []
        self._trans_b = {layer.index: layer.trans_b for layer in onnx_model.analysis.layers}
        for layer in onnx_model.analysis.layers:
            node = graph.node[layer.index]
            weight = tensor_array(sources[layer.weight])
            bias = tensor_array(sources[layer.bias]) if layer.bias else None
            self.add_module(layer.name, layer_module(layer, weight, bias))
            self._slots.append((layer.name, layer.index, ("weight", "bias") if layer.bias else ("weight",), node.input[0]))
            if layer.batchnorm is not None:
                self._add_batchnorm(graph.node[layer.batchnorm], layer.batchnorm, names[layer.batchnorm], sources, len(layer.weight_shape) - 2)
        for module in self.modules():
            module.eval()

    def _add_batchnorm(self, node, index: int, name: str, sources, rank: int) -> None:
        from onnx import helper

        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        scale, shift, mean, var = (tensor_array(sources[value]) for value in node.input[1:5])
        norm = _BATCHNORM[max(1, rank)](scale.shape[0], eps=float(attributes.get("epsilon", 1e-5)),
                                        momentum=1 - float(attributes.get("momentum", 0.9)))
        norm.weight = nn.Parameter(_tensor(scale), requires_grad=False)
        norm.bias = nn.Parameter(_tensor(shift), requires_grad=False)
        norm.running_mean = _tensor(mean)
        norm.running_var = _tensor(var)
        self.add_module(name, norm)
        self._slots.append((name, index, ("weight", "bias", "running_mean", "running_var"), node.input[0]))

    # --- the graph with the current parameters ------------------------------------------------

    def _state_key(self) -> tuple:
        return tuple((id(t), t._version, t.device.type) for t in list(self.parameters()) + list(self.buffers()))

    def current_graph(self):
        """The ONNX graph with this view's current parameters in place of the initializers."""
        replacements: dict[tuple[int, int], np.ndarray] = {}
        for name, index, attributes, _ in self._slots:
            module = self.get_submodule(name)
            for slot, attribute in enumerate(attributes, start=1):
                value = getattr(module, attribute).detach().to("cpu").numpy()
                if attribute == "weight" and isinstance(module, nn.Linear) and not self._trans_b[index]:
                    value = value.T  # Gemm with transB = 0 stores B as (in, out)
                replacements[(index, slot)] = value
        return with_inputs(self.onnx_model.proto, replacements, self.onnx_model.constants)

    def _session(self):
        key = self._state_key()
        with _SESSIONS_LOCK:
            cached = _SESSIONS.get(self)
        if cached is not None and cached[0] == key:
            return cached[1]
        reads = [read for _, _, _, read in self._slots]
        session = inference_session(with_outputs(self.current_graph(), reads))
        with _SESSIONS_LOCK:
            _SESSIONS[self] = (key, session)
        return session

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        if not isinstance(x, Tensor) or x.device.type == "meta":
            raise FpgmError("this ONNX graph runs in onnxruntime and cannot be traced in PyTorch")
        session = self._session()
        outputs = [value.name for value in self.onnx_model.proto.graph.output]
        batch = self.declared_dims[0] if self.declared_dims else None
        chunks = [x] if batch is None or x.shape[0] == batch else list(torch.split(x, batch))
        if batch is not None and any(chunk.shape[0] != batch for chunk in chunks):
            raise FpgmError(f"this ONNX graph takes batches of exactly {batch}; got {x.shape[0]}")
        results = []
        for chunk in chunks:
            values = run(session, {self.input_name: chunk.detach().to("cpu").numpy().astype(self.input_dtype, copy=False)})
            self._replay(values, x.device)
            results.append([torch.from_numpy(np.asarray(values[name])).to(x.device) for name in outputs])
        merged = [torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*results)]
        return merged[0] if len(merged) == 1 else tuple(merged)

    def _replay(self, values: dict[str, np.ndarray], device: torch.device) -> None:
        """Run each torch layer on the input onnxruntime computed for its node (for FLOP counters and hooks)."""
        for name, _, _, read in self._slots:
            module = self.get_submodule(name)
            inputs = torch.from_numpy(np.asarray(values[read])).to(device=device, dtype=next(module.parameters()).dtype)
            pad = getattr(module, "onnx_input_pad", None)
            if pad:
                inputs = F.pad(inputs, pad)
            same = getattr(module, "onnx_same_pad", None)
            if same:
                inputs = _same_padding(inputs, module, upper=same == "SAME_UPPER")
            if isinstance(module, nn.Linear) and inputs.dim() > 2:
                inputs = inputs.flatten(1)
            module(inputs)

    def extra_repr(self) -> str:
        return f"{self.onnx_model.filename}: {len(self.onnx_model.analysis.layers)} prunable layers, run by onnxruntime"
