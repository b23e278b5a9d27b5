"""fpgm_core.layers: which layers are prunable, and where each layer's filters are."""

import pytest
import torch
import torchvision
from torch import nn

from fpgm_core import layer_filters, output_layer_names, prunable_layers
from fpgm_core.layers import filter_index


class EveryKind(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3)
        self.c2 = nn.Conv2d(3, 6, 3, groups=3)
        self.dw = nn.Conv2d(6, 6, 3, groups=6)
        self.c3 = nn.Conv3d(1, 5, 2)
        self.t1 = nn.ConvTranspose1d(4, 7, 3)
        self.t2 = nn.ConvTranspose2d(4, 6, 3, groups=2)
        self.t3 = nn.ConvTranspose3d(2, 3, 2)
        self.head = nn.Linear(8, 10)


def test_every_prunable_type_is_listed_in_order_with_its_filters():
    layers = prunable_layers(EveryKind())
    assert [(l.name, l.type, l.filters, l.groups, l.filter_dim) for l in layers] == [
        ("c1", "Conv1d", 4, 1, 0),
        ("c2", "Conv2d", 6, 3, 0),
        ("dw", "Conv2d", 6, 6, 0),
        ("c3", "Conv3d", 5, 1, 0),
        ("t1", "ConvTranspose1d", 7, 1, 1),
        ("t2", "ConvTranspose2d", 6, 2, 1),
        ("t3", "ConvTranspose3d", 3, 1, 1),
        ("head", "Linear", 10, 1, 0),
    ]
    assert [l.is_output for l in layers] == [False] * 7 + [True]
    assert layers[5].weight_shape == (4, 3, 3, 3)


@pytest.mark.parametrize("arch,output", [("resnet18", "fc"), ("mobilenet_v2", "classifier.1"), ("squeezenet1_1", "classifier.1"), ("vit_b_16", "heads.head")])
def test_torchvision_classifier_is_the_output_layer(arch, output):
    layers = prunable_layers(torchvision.models.get_model(arch, weights=None))
    assert [l.name for l in layers if l.is_output] == [output]


@pytest.mark.parametrize(
    "layer,shape",
    [(nn.ConvTranspose2d(4, 6, 3, groups=2), (1, 4, 5, 5)), (nn.ConvTranspose1d(3, 5, 2), (1, 3, 7)), (nn.ConvTranspose3d(2, 4, 2, groups=2), (1, 2, 3, 3, 3))],
)
def test_transposed_filter_row_is_what_produces_that_output_channel(layer, shape):
    # Zeroing row o of layer_filters (through filter_index) must silence output channel o alone.
    torch.manual_seed(0)
    layer.bias = None
    sample = torch.randn(shape)
    full = layer(sample)
    filters = layer_filters(layer)
    assert filters.shape[0] == layer.out_channels
    for channel in range(layer.out_channels):
        keep = torch.ones(layer.out_channels, dtype=torch.bool)
        keep[channel] = False
        copy = nn.Module()
        pruned = type(layer)(layer.in_channels, layer.out_channels, layer.kernel_size, groups=layer.groups, bias=False)
        pruned.load_state_dict(layer.state_dict())
        with torch.no_grad():
            pruned.weight[filter_index(pruned, keep)] = 0
        out = pruned(sample)
        assert torch.all(out[:, channel] == 0)
        others = [c for c in range(layer.out_channels) if c != channel]
        torch.testing.assert_close(out[:, others], full[:, others])
        assert torch.equal(layer_filters(pruned)[channel], torch.zeros_like(filters[channel]))


class TwoHeads(nn.Module):
    """LeViT's pattern: a classifier and a distillation head, averaged; a projection registered last but run first."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 10)
        self.head_dist = nn.Linear(16, 10)
        self.stem = nn.Conv2d(3, 16, 3)
        self.late_registered = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        x = self.late_registered(self.stem(x)).mean((2, 3))
        return (self.head(x) + self.head_dist(x)) / 2


def test_every_layer_whose_output_reaches_the_model_output_is_an_output_layer():
    layers = prunable_layers(TwoHeads())
    assert [l.name for l in layers if l.is_output] == ["head", "head_dist"]
    assert output_layer_names(TwoHeads()) == ("head", "head_dist")


def test_a_conv_classifier_through_pooling_is_the_output_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert output_layer_names(model) == ("2",)
