"""fpgm_core.tracing: fx graphs of tensor-free copies, and model work that is safe beside other threads."""

from __future__ import annotations

import threading

import torch
import torchvision
from torch import nn

import fpgm_core
from fpgm_core import counting, evaluation, masking
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
