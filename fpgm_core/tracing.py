"""Model work that is safe beside other threads: one process-wide lock, and fx graphs of tensor-free copies.

torch.fx's symbolic tracing patches ``nn.Module.__call__`` and ``nn.Module.__getattr__`` for the
whole process while it traces, and ``FlopCounterMode`` hooks every module's forward globally. Where
sessions share one process (the dashboard serves each browser session from a thread), a forward
pass in one thread during another thread's trace fails ("module is not installed as a submodule"),
and reading a parameter of the model being traced returns an fx Proxy instead of the tensor.

So the engine's forward passes, traces and hooked counts hold :data:`MODEL_LOCK`, and traces run on
a copy of the model whose tensors live on the meta device: the copy's parameters are nobody else's,
so no other thread's reads are intercepted, and copying costs no memory.
"""

from __future__ import annotations

import copy
import functools
import itertools
import threading
from typing import Callable, TypeVar

import torch
from torch import nn

__all__ = ["MODEL_LOCK", "holding_model_lock", "meta_copy", "fx_graph"]

_F = TypeVar("_F", bound=Callable)

# Re-entrant: slimming runs forward passes inside work that already holds it.
MODEL_LOCK = threading.RLock()


def holding_model_lock(function: _F) -> _F:
    """Run ``function`` under :data:`MODEL_LOCK` (for work made of many forward passes and traces)."""

    @functools.wraps(function)
    def locked(*args, **kwargs):
        with MODEL_LOCK:
            return function(*args, **kwargs)

    return locked  # type: ignore[return-value]


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parameter and buffer on the meta device (no data)."""
    memo: dict[int, object] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def fx_graph(model: nn.Module) -> torch.fx.Graph | None:
    """The torch.fx graph of ``model`` (module names as in ``model``), or None if fx cannot trace it."""
    with MODEL_LOCK:
        try:
            return torch.fx.symbolic_trace(meta_copy(model)).graph
        except Exception:  # fx and deepcopy raise many types for untraceable models
            return None
