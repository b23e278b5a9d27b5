"""fpgm_core.tracing: fx graphs of tensor-free copies, and model work that is safe beside other threads."""

from __future__ import annotations

import threading
import time

import torch
import torchvision
from torch import nn

import fpgm_core
from fpgm_core import counting, evaluation, masking, tracing
from fpgm_core.tracing import fx_graph, meta_copy


def test_meta_copy_has_the_structure_and_no_data():
    model = torchvision.models.resnet18()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    copy = meta_copy(model)
    assert [name for name, _ in copy.named_modules()] == [name for name, _ in model.named_modules()]
    assert all(t.device.type == "meta" for t in (*copy.parameters(), *copy.buffers()))
    assert {n: t.shape for n, t in copy.state_dict().items()} == {n: t.shape for n, t in before.items()}
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert all(t.device.type == "cpu" for t in model.parameters())


def test_fx_graph_names_the_model_modules_or_is_none_when_untraceable():
    model = fpgm_core.build_model("demo", "none").model
    targets = {node.target for node in fx_graph(model).nodes if node.op == "call_module"}
    assert {"conv1", "bn1", "fc"} <= targets

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x  # control flow on values: fx cannot trace it

    assert fx_graph(DataDependent()) is None


def test_traces_and_forward_passes_in_parallel_threads_do_not_disturb_each_other():
    # fx patches nn.Module for the whole process while it traces: before tracing ran on meta copies
    # under a lock, the forward passes here failed ("module is not installed as a submodule") and
    # reads of the traced model's weights returned fx Proxies.
    model = fpgm_core.build_model("demo", "default").model
    images = evaluation.demo_data().images[:64]
    expected = (masking.following_batchnorms(model), counting.input_producers(model),
                evaluation.predict(model, images), counting.layer_flops(model, (1, 1, 8, 8)))
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def repeat(work) -> None:
        start.wait()
        try:
            for _ in range(15):
                work()
        except BaseException as exc:  # collected for the main thread's assertion
            errors.append(exc)

    def trace() -> None:
        assert masking.following_batchnorms(model) == expected[0]
        assert counting.input_producers(model) == expected[1]

    def run_forward() -> None:
        assert torch.equal(evaluation.predict(model, images), expected[2])
        assert counting.layer_flops(model, (1, 1, 8, 8)) == expected[3]

    def read_weights() -> None:
        layers = fpgm_core.prunable_layers(model)
        assert all(isinstance(dict(model.named_modules())[layer.name].weight, nn.Parameter) for layer in layers)

    threads = [threading.Thread(target=repeat, args=(work,)) for work in (trace, run_forward, read_weights)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def _in_threads(*works, repeats=10):
    """Run each ``work`` ``repeats`` times in its own thread, all starting together; the errors raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(works))

    def repeat(work) -> None:
        start.wait()
        try:
            for _ in range(repeats):
                work()
        except BaseException as exc:  # collected for the main thread's assertion
            errors.append(exc)

    threads = [threading.Thread(target=repeat, args=(work,)) for work in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_forward_passes_without_any_lock_are_not_disturbed_by_traces_in_other_threads():
    # fx's own tracer intercepted every thread's module calls while it traced ("module is not
    # installed as a submodule"); ours records only its own thread's, so a forward pass elsewhere
    # (a slim's latency runs, which no longer hold the lock exclusively) needs no lock.
    traced = torchvision.models.resnet18()
    other = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = other(x)

    def forward() -> None:
        with torch.no_grad():
            assert torch.equal(other(x), expected)

    errors = _in_threads(lambda: fx_graph(traced), forward, repeats=8)
    assert not errors, errors


def test_flop_counts_attribute_only_their_own_threads_modules():
    # FlopCounterMode's module tracker hooks every module of the process: a same-class model run by
    # another thread used to add its FLOPs under the same names.
    counted = torchvision.models.resnet18().eval()
    expected = counting.layer_flops(counted, (1, 3, 32, 32))
    other = torchvision.models.resnet18().eval()

    def count() -> None:
        assert counting.layer_flops(counted, (1, 3, 32, 32)) == expected

    def forward() -> None:
        with torch.no_grad():
            other(torch.randn(1, 3, 64, 64))

    errors = _in_threads(count, forward, repeats=6)
    assert not errors, errors


def test_model_lock_holds_shared_together_and_exclusive_alone():
    lock = tracing.ModelLock()
    inside = threading.Barrier(2, timeout=5)

    def shared() -> None:
        with lock.shared():
            inside.wait()  # both threads are inside at once, or this times out

    errors = _in_threads(shared, shared, repeats=1)
    assert not errors, errors
    events: list[str] = []
    release = threading.Event()

    def hold_shared() -> None:
        with lock.shared():
            events.append("shared in")
            release.wait(5)
            events.append("shared out")

    holder = threading.Thread(target=hold_shared)
    holder.start()
    while "shared in" not in events:
        time.sleep(0.01)
    waiter = threading.Thread(target=lambda: (lock.acquire(), events.append("exclusive in"), lock.release()))
    waiter.start()
    time.sleep(0.2)
    assert "exclusive in" not in events  # waits for the shared holder
    release.set()
    holder.join(5)
    waiter.join(5)
    assert events == ["shared in", "shared out", "exclusive in"]
    with lock, lock, lock.shared():  # re-entrant, and an exclusive holder may take it shared
        pass


def test_an_export_in_one_thread_does_not_corrupt_forward_passes_in_another():
    # torch.export patches nn.Module for the whole process: another thread's forward pass during an
    # export returned wrong numbers. Exports hold MODEL_LOCK exclusively, forward passes shared.
    from fpgm_core.slim import serialize_model

    exported = torchvision.models.resnet18().eval()
    other = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = other(x)

    def forward() -> None:
        with tracing.MODEL_LOCK.shared(), torch.no_grad():
            assert torch.allclose(other(x), expected)

    errors = _in_threads(lambda: serialize_model(exported, ".pt2", input_shape=(1, 3, 32, 32), check=False), forward, repeats=2)
    assert not errors, errors


def test_copies_keep_cached_non_leaf_tensors_as_plain_copies():
    # timm's LeViT caches attention biases computed from a parameter after an eval-mode forward
    # pass with gradients on; deepcopy refuses such tensors ("only graph leaves").
    class Caching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bias_table = nn.Parameter(torch.randn(4))
            self.cache: dict[str, torch.Tensor] = {}

        def forward(self, x):
            self.cache["cpu"] = self.bias_table * 2
            return self.conv(x) + self.cache["cpu"].view(1, -1, 1, 1)

    model = Caching().eval()
    model(torch.randn(1, 3, 4, 4))
    assert model.cache["cpu"].grad_fn is not None
    duplicate = tracing.copy_model(model)
    assert torch.equal(duplicate.cache["cpu"], model.cache["cpu"]) and duplicate.cache["cpu"].grad_fn is None
    assert all(t.device.type == "meta" for t in meta_copy(model).cache.values())
    masked = fpgm_core.apply_masks(model, {"conv": torch.tensor([True, False, True, True])})
    assert torch.all(masked.conv.weight[1] == 0)
