"""fpgm_core.groups on third-party patterns: norms outside torch.nn, two heads, splits, attention heads, a hung analysis."""

import threading
import time

import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn

from fpgm_core import SparsityPlan, apply_masks, layer_flops
from fpgm_core.groups import GroupError, analyse_groups, dependency_groups, select_group_channels
from fpgm_core.slim import SlimError, slim_model
from fpgm_core.tracing import MODEL_LOCK
from test_layers import TwoHeads
from test_masking import BatchNormAct


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def _outputs(model, shape):
    with torch.no_grad():
        return model.eval()(torch.randn(shape, generator=torch.Generator().manual_seed(3)))


class ActNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = BatchNormAct(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = BatchNormAct(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.bn2(self.conv2(self.bn1(self.conv1(x)))).mean((2, 3)))


def test_groups_behind_batchnorm_subclasses_are_not_blocked_and_slim():
    # fx traced into timm's BatchNormAct2d, so the norm seemed fed by no pruned layer and every
    # group was blocked: efficientnet_b0 "slimmed" with 0 % fewer FLOPs.
    model = ActNormNet().eval()
    groups = dependency_groups(model, (1, 3, 8, 8))
    assert [g.blocked_by for g in groups if g.layers] == [None, None]
    result = slim_model(model, SparsityPlan(sparsity=0.5), input_shape=(1, 3, 8, 8))
    assert result.flops_after < 0.6 * result.flops_before
    _close(_outputs(result.model, (2, 3, 8, 8)), _outputs(apply_masks(model, result.masks), (2, 3, 8, 8)))


def test_no_group_removes_rows_of_either_classifier_head():
    analysis = analyse_groups(TwoHeads(), (1, 3, 8, 8))
    losing = {name for group in analysis.groups for name in group.layers}
    assert losing == {"stem", "late_registered"}


class Splitting(nn.Module):
    """res2net's pattern: a conv's channels split at widths fixed in the code."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 12, 1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        parts = torch.split(self.conv1(torch.relu(self.stem(x))), 4, dim=1)
        x = torch.cat([self.branch(parts[0]), parts[1], parts[2]], dim=1)
        return self.head(x.mean((2, 3)))


def test_a_group_through_a_fixed_split_is_kept_whole_and_the_rest_slims():
    model = Splitting().eval()
    groups = dependency_groups(model, (1, 3, 8, 8))
    split = next(g for g in groups if "conv1" in g.layers)
    assert split.blocked_by == "conv1" and "SplitBackward0 operation after it splits these channels" in split.reason
    assert next(g for g in groups if g.root == "stem").blocked_by is None
    result = slim_model(model, SparsityPlan(sparsity=0.5), input_shape=(1, 3, 8, 8))
    assert result.model.conv1.out_channels == 12 and result.model.stem.out_channels == 4
    _close(_outputs(result.model, (2, 3, 8, 8)), _outputs(apply_masks(model, result.masks), (2, 3, 8, 8)))


def test_attention_loses_whole_heads_and_computes_what_the_masked_model_computes():
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5).eval()
    shape = (1, 3, 32, 32)
    analysis = analyse_groups(model, shape)
    attention = [g for g in analysis.groups if g.heads > 1]
    assert sorted(g.root for g in attention) == ["blocks.0.attn.proj", "blocks.1.attn.proj"]
    assert all(g.blocked_by is None and g.layers == (g.root.replace("proj", "qkv"),) for g in attention)
    result = slim_model(model, SparsityPlan(sparsity=0.5), input_shape=shape)
    for block in result.model.blocks:
        assert block.attn.num_heads == 2 and block.attn.qkv.out_features == 3 * 2 * 16
        assert block.attn.head_dim == 16  # whole heads left: the attention's scale is unchanged
    _close(_outputs(result.model, (2, 3, 32, 32)), _outputs(apply_masks(model, result.masks), (2, 3, 32, 32)))
    assert result.verification.passed


def test_a_hung_analysis_ends_with_a_group_error_within_its_limit_and_holds_no_lock(monkeypatch):
    # Torch-Pruning's group search never returned on timm's rexnet_100, holding the model lock:
    # every other session froze. Now it runs bounded, in a worker thread that is stopped after.
    def search_forever(self, *args, **kwargs):
        while True:
            self._forever = getattr(self, "_forever", 0) + 1
        yield  # pragma: no cover - a generator, as the real one

    monkeypatch.setattr(tp.DependencyGraph, "get_all_groups", search_forever)
    model = ActNormNet().eval()
    outcome: dict[str, object] = {}

    def slim() -> None:
        try:
            slim_model(model, SparsityPlan(sparsity=0.5), input_shape=(1, 3, 8, 8), time_limit_s=2)
        except SlimError as exc:
            outcome["error"] = str(exc)

    started = time.monotonic()
    worker = threading.Thread(target=slim)
    worker.start()
    time.sleep(1.0)
    with MODEL_LOCK:  # exclusive: no one holds the lock while the search spins
        outcome["locked_after_s"] = time.monotonic() - started
    worker.join(30)
    assert not worker.is_alive()
    assert outcome["locked_after_s"] < 2.0
    assert "did not finish within 2 s" in outcome["error"] and "masked export still works" in outcome["error"]
    assert time.monotonic() - started < 15
    time.sleep(0.5)
    assert not [t for t in threading.enumerate() if t.name == "fpgm-torch-pruning-analysis"], "the worker was not stopped"


def test_a_model_whose_code_fixes_a_width_fails_with_a_slim_error_naming_the_line():
    class FixedView(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            x = self.conv(x)
            x = x.reshape(x.shape[0], 8, -1).mean(-1)  # 8 channels, whatever the conv has
            return self.head(x)

    with pytest.raises(SlimError, match=r"no longer runs: RuntimeError in head \(Linear\), at `return self.head\(x\)` \(test_groups.py"):
        slim_model(FixedView().eval(), SparsityPlan(sparsity=0.5), input_shape=(1, 3, 6, 6))


def test_group_selection_flops_match_when_masked():
    model = ActNormNet().eval()
    selection = select_group_channels(model, SparsityPlan(sparsity=0.25), input_shape=(1, 3, 8, 8))
    assert {name: int((~keep).sum()) for name, keep in selection.masks.items()} == {"conv1": 4, "conv2": 4}
    assert layer_flops(model, (1, 3, 8, 8))[0] > 0
    with pytest.raises(GroupError):
        analyse_groups(model, (1, 3), check=False)
