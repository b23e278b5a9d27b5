"""Model work that is safe beside other threads, and what a model's data flow says about its layers.

**Threads.** The dashboard serves every browser session from a thread of one process, and some of
torch's machinery is process-wide. torch.fx's symbolic tracing patches ``nn.Module.__call__`` and
``nn.Module.__getattr__`` while it traces: with fx's own tracer, a forward pass in another thread
failed ("module is not installed as a submodule") and reads of the traced model's weights returned
fx Proxies. ``torch.export`` (``.pt2`` and ONNX exports) patches the same way without looking at
threads, and another thread's forward pass meanwhile returns wrong numbers. So:

* our tracer records only the calls of the thread that traces (every other thread's module calls
  and attribute reads pass straight through its patches), traces run on a copy whose tensors live
  on the meta device, and two traces never run at once (they would undo each other's patches);
* FLOP counts (:mod:`fpgm_core.counting`) attribute only their own thread's modules;
* :data:`MODEL_LOCK` is a shared/exclusive lock: forward passes, traces and FLOP counts hold it
  *shared* (``with MODEL_LOCK.shared():``) and run side by side, so one session's long work (a
  slim's latency runs) does not hold up the others'; exports hold it *exclusive*
  (``with MODEL_LOCK:``) and wait for the forward passes in flight, which wait for them in turn.

**Data flow.** One trace per model (cached per model object and structure, :func:`model_trace`)
answers three questions, for masking, FLOP estimates, plans and slimming alike:

* which normalisation layers directly follow each prunable layer (through activations, dropout,
  pooling and channel permutes that keep a zero channel zero), whatever class implements them: fx
  treats every prunable layer and every BatchNorm, GroupNorm and InstanceNorm subclass as a leaf —
  also those defined outside ``torch.nn``, such as timm's ``BatchNormAct2d``, which fx would
  otherwise trace into and hide — and norms that call ``F.batch_norm``, ``F.layer_norm``,
  ``F.group_norm``… on their own parameters (timm's ``LayerNorm2d``) are found by those calls;
* which prunable layer feeds each prunable layer's input channels directly;
* which prunable layers are outputs: those whose output reaches a model output without passing
  another prunable layer (a model with two classifier heads has two).

Where fx cannot trace a model, registration order stands in — a BatchNorm registered right after a
layer of its width, the last registered layer as the output — and a :class:`TracingFallbackWarning`
says so; the trace records why (``ModelTrace.error``) for recipes and pages.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TracingFallbackWarning
from .layers import PRUNABLE_TYPES, output_width

__all__ = [
    "ModelLock",
    "MODEL_LOCK",
    "LEAF_NORM_TYPES",
    "NORM_TYPES",
    "holding_model_lock",
    "meta_copy",
    "copy_model",
    "fx_graph",
    "ModelTrace",
    "model_trace",
]

_F = TypeVar("_F", bound=Callable)



class ModelLock:
    """A re-entrant shared/exclusive lock: ``with lock:`` is exclusive, ``with lock.shared():`` shared.

    Shared holders run together; an exclusive holder runs alone, and may also take it shared
    (its own forward passes). Shared holders never wait for an exclusive holder that is only
    waiting, so nested shared use cannot deadlock; a thread must not ask for exclusive while it
    holds shared.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._shared: dict[int, int] = {}

    def acquire(self) -> bool:
        """Take the lock exclusively (re-entrant); waits for every other thread's shared hold to end."""
        me = threading.get_ident()
        with self._condition:
            if self._owner == me:
                self._depth += 1
                return True
            while self._owner is not None or any(thread != me for thread in self._shared):
                self._condition.wait()
            self._owner, self._depth = me, 1
        return True

    def release(self) -> None:
        """Give up one exclusive hold."""
        with self._condition:
            if self._owner != threading.get_ident():
                raise RuntimeError("ModelLock released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._condition.notify_all()

    def __enter__(self) -> "ModelLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the lock shared for the block: alongside other shared holders, never beside an exclusive one."""
        me = threading.get_ident()
        with self._condition:
            while self._owner is not None and self._owner != me:
                self._condition.wait()
            self._shared[me] = self._shared.get(me, 0) + 1
        try:
            yield
        finally:
            with self._condition:
                left = self._shared[me] - 1
                if left:
                    self._shared[me] = left
                else:
                    del self._shared[me]
                    self._condition.notify_all()


MODEL_LOCK = ModelLock()
# Two fx traces at once would stack and then undo each other's patches of nn.Module.
_TRACE_LOCK = threading.RLock()

# Norms that normalise along dim 1 and that fx keeps as one call even when defined outside torch.nn.
LEAF_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
)
# Every normalisation module class we recognise by type (LayerNorm subclasses are traced into:
# timm's LayerNorm2d permutes around F.layer_norm, and the permute decides which dim it normalises).
NORM_TYPES: tuple[type[nn.Module], ...] = LEAF_NORM_TYPES + (nn.LayerNorm, nn.RMSNorm)
_LEAF_TYPES = PRUNABLE_TYPES + LEAF_NORM_TYPES

# Modules and functions whose output channel c is zero wherever input channel c is zero.
_ZERO_KEEPING_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.ELU, nn.CELU,
    nn.SELU, nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
)
_ZERO_KEEPING_FUNCTIONS: set[Any] = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.silu, F.gelu, F.hardswish, F.mish,
    F.elu, F.selu, F.celu, F.hardtanh, torch.tanh, F.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.pad,
}
_ZERO_KEEPING_METHODS = {"relu", "relu_", "tanh", "tanh_", "contiguous", "clone"}
# Channel-wise, but a zero input channel does not stay zero: fine for "which layer feeds which".
_CHANNELWISE_MODULES = _ZERO_KEEPING_MODULES + (nn.Sigmoid, nn.Hardsigmoid) + NORM_TYPES
_CHANNELWISE_FUNCTIONS = _ZERO_KEEPING_FUNCTIONS | {torch.sigmoid, F.sigmoid, F.hardsigmoid}
_CHANNELWISE_METHODS = _ZERO_KEEPING_METHODS | {"sigmoid", "sigmoid_"}
_PERMUTES = ({torch.permute}, {"permute"})
_FLATTENS = ({torch.flatten}, {"flatten"})
# Functional norms: where their weight is among the arguments, and which dim they normalise
# (1 = channels first, -1 = the last dim only, as with a weight of one value per channel).
_NORM_FUNCTIONS: dict[Any, tuple[int, int]] = {
    F.batch_norm: (3, 1), F.instance_norm: (3, 1), F.group_norm: (2, 1), torch.batch_norm: (1, 1),
    torch.group_norm: (2, 1), torch.instance_norm: (1, 1), F.layer_norm: (2, -1), torch.layer_norm: (2, -1),
    F.rms_norm: (2, -1), torch.rms_norm: (2, -1),
}
_WALK_LIMIT = 16  # ops between a layer and its norm; real models need two or three


def holding_model_lock(function: _F) -> _F:
    """Run ``function`` holding :data:`MODEL_LOCK` exclusively (for work that patches modules process-wide)."""

    @functools.wraps(function)
    def locked(*args, **kwargs):
        with MODEL_LOCK:
            return function(*args, **kwargs)

    return locked  # type: ignore[return-value]


def _cached_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Tensors a module keeps outside its parameters and buffers (caches such as LeViT's attention biases)."""
    found = []
    for module in model.modules():
        for value in vars(module).values():
            values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else (value,)
            found.extend(v for v in values if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter))
    return found


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, also where modules cache non-leaf tensors (which deepcopy refuses).

    timm's LeViT caches its attention biases after an eval-mode forward pass with gradients on; the
    cache is computed from a parameter, so the copy keeps a detached copy of it. A trace already
    made of ``model`` carries over to the copy.
    """
    memo: dict[int, object] = {}
    for tensor in _cached_tensors(model):
        if tensor.grad_fn is not None:
            memo[id(tensor)] = tensor.detach().clone()
    duplicate = copy.deepcopy(model, memo)
    with _CACHE_LOCK:
        if model in _TRACES:
            _TRACES[duplicate] = _TRACES[model]
    return duplicate


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parameter and buffer (and cached tensor) on the meta device."""
    memo: dict[int, object] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers(), _cached_tensors(model)):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


class _ThreadTracer(torch.fx.Tracer):
    """fx's tracer with prunable layers and norms as leaves, deaf to every thread but its own."""

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LEAF_TYPES) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)  # another thread's forward pass: not ours to record
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _trace(model: nn.Module) -> torch.fx.Graph:
    with MODEL_LOCK.shared(), _TRACE_LOCK:
        return _ThreadTracer().trace(meta_copy(model).eval())


def fx_graph(model: nn.Module) -> torch.fx.Graph | None:
    """The torch.fx graph of ``model`` in eval mode (module names as in ``model``), or None if fx cannot trace it."""
    try:
        return _trace(model)
    except Exception:  # fx and deepcopy raise many types for untraceable models
        return None


@dataclass(frozen=True)
class ModelTrace:
    """What a model's data flow says about its prunable layers (see the module docstring).

    ``norms`` maps a prunable layer to the norm modules that directly follow it, and ``norm_params``
    each such norm to the names of its per-channel weight and bias (None where it has none).
    ``traced`` is False where fx failed (``error`` says why) and registration order stood in.
    """

    traced: bool
    error: str | None
    norms: Mapping[str, tuple[str, ...]]
    norm_params: Mapping[str, tuple[str | None, str | None]]
    producers: Mapping[str, str]
    outputs: tuple[str, ...]
    model_class: str = ""
    _order: tuple[str, ...] = field(default=(), repr=False)

    @property
    def method(self) -> str:
        """How norms and output layers were found: "data flow" or "registration order"."""
        return "data flow" if self.traced else "registration order"

    @property
    def fallback_note(self) -> str | None:
        """A sentence for the user when registration order stood in for the data flow, else None."""
        if self.traced:
            return None
        return (
            f"torch.fx could not trace {self.model_class} ({self.error}), so the normalisation layer after each "
            "pruned layer was matched by registration order and the output layer is the last one registered, "
            "not found from the data flow; masked exports are still checked with a forward pass"
        )

    def to_dict(self) -> dict[str, Any]:
        """The recipe's record of how the masks' norms and outputs were found."""
        return {"data_flow": self.traced, "method": self.method, "error": self.error, "output_layers": list(self.outputs)}


_CACHE_LOCK = threading.Lock()
_TRACES: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, ModelTrace]]" = weakref.WeakKeyDictionary()


def _structure(model: nn.Module) -> tuple:
    # Module names and classes only: what the trace's answers are about. Widths do not enter them
    # (a slimmed copy keeps its norms matched to its layers), and reading every shape would cost
    # more than a slider step may (≈8 ms on ViT-B/16 against ≈1 ms for this).
    return tuple((name, type(m)) for name, m in model.named_modules())


def model_trace(model: nn.Module) -> ModelTrace:
    """The data-flow facts of ``model`` (cached per model object while its structure is unchanged).

    Warns with :class:`TracingFallbackWarning` when fx cannot trace the model (once per model).
    """
    structure = _structure(model)
    with _CACHE_LOCK:
        cached = _TRACES.get(model)
    if cached is not None and cached[0] == structure:
        return cached[1]
    try:
        graph, error = _trace(model), None
    except Exception as exc:  # fx and deepcopy raise many types for untraceable models
        graph, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}".rstrip(": ")
    modules = dict(model.named_modules())
    if graph is not None:
        trace = _from_graph(graph, modules, type(model).__name__)
    else:
        trace = _from_order(model, type(model).__name__, error)
        warnings.warn(trace.fallback_note, TracingFallbackWarning, stacklevel=2)
    with _CACHE_LOCK:
        _TRACES[model] = (structure, trace)
    return trace


def _is_prunable(module: Any) -> bool:
    return isinstance(module, PRUNABLE_TYPES) and getattr(module, "weight", None) is not None


def _start_axis(module: nn.Module) -> tuple[int, int | None]:
    """(channel dim, number of dims) of a prunable layer's output; Linear: the last dim, rank unknown."""
    if isinstance(module, nn.Linear):
        return -1, None
    return 1, module.weight.dim()  # Conv{k}d and ConvTranspose{k}d: k + 2 weight dims, k + 2 output dims


def _channel_dim_fits(axis: int, ndim: int | None, wanted: int) -> bool:
    if wanted == 1:
        return axis == 1
    return axis == -1 or (ndim is not None and axis == ndim - 1)


def _permuted(node: torch.fx.Node, axis: int, ndim: int | None) -> tuple[int, int] | None:
    """Where the channel dim goes through a permute, and the rank; None if the dims are not plain ints."""
    dims: Any = node.args[1:] if node.op == "call_method" else node.args[1] if len(node.args) > 1 else node.kwargs.get("dims")
    if isinstance(dims, (list, tuple)) and len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]  # x.permute((0, 2, 3, 1))
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return None
    rank = len(dims)
    if ndim is not None and ndim != rank:
        return None
    dims = [d % rank for d in dims]
    return dims.index(axis % rank), rank


def _keeps_last_dim(node: torch.fx.Node, modules: Mapping[str, nn.Module], axis: int, ndim: int | None) -> bool:
    """Whether a flatten leaves the channel dim, the last one, alone (it merges only leading dims)."""
    if not (axis == -1 or (ndim is not None and axis == ndim - 1)):
        return False
    if node.op == "call_module":
        module = modules.get(node.target)
        start, end = module.start_dim, module.end_dim
    else:
        args = list(node.args[1:3])
        start = args[0] if args else node.kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
    if not isinstance(start, int) or not isinstance(end, int):
        return False
    return end >= 0 and (ndim is None or end < ndim - 1) and start <= end


def _attr_owner(node: Any) -> tuple[str, str] | None:
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        owner, _, attr = str(node.target).rpartition(".")
        return owner, attr
    return None


def _norm_at(node: torch.fx.Node, modules: Mapping[str, nn.Module], width: int, axis: int, ndim: int | None):
    """(norm module name, weight attr, bias attr) if ``node`` normalises our channels, else None."""
    if node.op == "call_module":
        module = modules.get(node.target)
        if isinstance(module, LEAF_NORM_TYPES):
            channels = module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features
            # BatchNorm1d on (N, C) normalises the last dim, where a Linear's channels are.
            flat = isinstance(module, nn.BatchNorm1d) and axis == -1 and ndim in (None, 2)
            if channels == width and (flat or _channel_dim_fits(axis, ndim, 1)):
                return node.target, "weight" if module.weight is not None else None, "bias" if module.bias is not None else None
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if tuple(module.normalized_shape) == (width,) and _channel_dim_fits(axis, ndim, -1):
                has_bias = getattr(module, "bias", None) is not None
                return node.target, "weight" if module.weight is not None else None, "bias" if has_bias else None
        return None
    if node.op != "call_function" or node.target not in _NORM_FUNCTIONS:
        return None
    position, wanted = _NORM_FUNCTIONS[node.target]
    weight = node.args[position] if len(node.args) > position else node.kwargs.get("weight")
    bias = node.args[position + 1] if len(node.args) > position + 1 else node.kwargs.get("bias")
    if node.target in (F.rms_norm, torch.rms_norm):
        bias = None
    owner = _attr_owner(weight)
    if owner is None or not _channel_dim_fits(axis, ndim, wanted):
        return None
    parameter = getattr(modules.get(owner[0]), owner[1], None)
    if not isinstance(parameter, torch.Tensor) or tuple(parameter.shape) != (width,):
        return None
    bias_owner = _attr_owner(bias)
    return owner[0], owner[1], bias_owner[1] if bias_owner is not None and bias_owner[0] == owner[0] else None


def _is_op(node: torch.fx.Node, modules: Mapping[str, nn.Module], module_types, functions, methods) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), module_types)
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def _feeds(node: torch.fx.Node, user: torch.fx.Node) -> bool:
    """Whether ``node`` is the data input (first argument) of ``user``."""
    first = user.args[0] if user.args else user.kwargs.get("input")
    return first is node


def _following_norms(node: torch.fx.Node, modules: Mapping[str, nn.Module]):
    layer = modules[node.target]
    width = output_width(layer)
    axis, ndim = _start_axis(layer)
    found = []
    queue = [(node, axis, ndim, 0)]
    seen = set()
    while queue:
        current, axis, ndim, depth = queue.pop(0)
        if (current, axis) in seen or depth > _WALK_LIMIT:
            continue
        seen.add((current, axis))
        for user in current.users:
            if not _feeds(current, user):
                continue
            norm = _norm_at(user, modules, width, axis, ndim)
            if norm is not None:
                found.append(norm)
            elif _is_op(user, modules, _ZERO_KEEPING_MODULES, _ZERO_KEEPING_FUNCTIONS, _ZERO_KEEPING_METHODS):
                queue.append((user, axis, ndim, depth + 1))
            elif _is_op(user, modules, (), *_PERMUTES):
                moved = _permuted(user, axis, ndim)
                if moved is not None:
                    queue.append((user, *moved, depth + 1))
            elif _is_op(user, modules, (nn.Flatten,), *_FLATTENS) and _keeps_last_dim(user, modules, axis, ndim):
                queue.append((user, -1, None, depth + 1))  # leading dims merged (LeViT's x.flatten(0, 1))
    return found


def _producer(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> str | None:
    source = node.args[0] if node.args else None
    for _ in range(_WALK_LIMIT):
        if not isinstance(source, torch.fx.Node):
            return None
        if source.op == "call_module" and _is_prunable(modules.get(source.target)):
            return str(source.target)
        channelwise = _is_op(source, modules, _CHANNELWISE_MODULES, _CHANNELWISE_FUNCTIONS, _CHANNELWISE_METHODS)
        norm_call = source.op == "call_function" and source.target in _NORM_FUNCTIONS
        if not (channelwise or norm_call or _is_op(source, modules, (), *_PERMUTES)) or not source.args:
            return None
        source = source.args[0]
    return None


def _from_graph(graph: torch.fx.Graph, modules: Mapping[str, nn.Module], model_class: str) -> ModelTrace:
    nodes = list(graph.nodes)

    def prunable(node: torch.fx.Node) -> bool:
        return node.op == "call_module" and _is_prunable(modules.get(node.target))

    # free[n]: some path from n's value reaches the model's output without passing a prunable layer.
    free: dict[torch.fx.Node, bool] = {}
    for node in reversed(nodes):
        free[node] = any(user.op == "output" or (not prunable(user) and free.get(user, False)) for user in node.users)
    norms: dict[str, list[str]] = {}
    norm_params: dict[str, tuple[str | None, str | None]] = {}
    producers: dict[str, str] = {}
    outputs: list[str] = []
    for node in nodes:
        if not prunable(node):
            continue
        name = str(node.target)
        for norm, weight, bias in _following_norms(node, modules):
            if norm not in norms.setdefault(name, []):
                norms[name].append(norm)
            norm_params[norm] = (weight, bias)
        source = _producer(node, modules)
        if source is not None:
            producers[name] = source
        if free[node] and name not in outputs:
            outputs.append(name)
    order = tuple(name for name, module in modules.items() if _is_prunable(module))
    outputs.sort(key=lambda name: order.index(name) if name in order else len(order))
    return ModelTrace(
        traced=True, error=None, norms={k: tuple(v) for k, v in norms.items() if v}, norm_params=norm_params,
        producers=producers, outputs=tuple(outputs), model_class=model_class, _order=order,
    )


def _from_order(model: nn.Module, model_class: str, error: str | None) -> ModelTrace:
    """Registration order standing in for data flow: a BatchNorm right after a layer of its width."""
    norms: dict[str, tuple[str, ...]] = {}
    norm_params: dict[str, tuple[str | None, str | None]] = {}
    previous: tuple[str, nn.Module] | None = None
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and previous is not None:
            prev_name, prev = previous
            if module.num_features == output_width(prev):
                norms[prev_name] = (name,)
                norm_params[name] = ("weight", "bias") if module.affine else (None, None)
        if _is_prunable(module):
            previous, last = (name, module), name
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            previous = None
    order = tuple(name for name, module in model.named_modules() if _is_prunable(module))
    return ModelTrace(
        traced=False, error=error, norms=norms, norm_params=norm_params, producers={},
        outputs=(last,) if last is not None else (), model_class=model_class, _order=order,
    )

