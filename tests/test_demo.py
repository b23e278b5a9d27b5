"""Tests for the bundled demo model (fpgm_core.demo): checkpoint, architecture, data split, training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.fx
from safetensors.torch import load_file
from torch import nn

from fpgm_core.demo import (
    DEMO_CHECKPOINT,
    DEMO_CLASSES,
    DEMO_INPUT_SHAPE,
    DEMO_METRICS,
    DemoNet,
    TrainingCancelled,
    accuracy,
    digits_split,
    load_demo_model,
    save_demo_checkpoint,
    train_demo,
)


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads(DEMO_METRICS.read_text())


@pytest.fixture(scope="module")
def split():
    return digits_split(0)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --- committed checkpoint -------------------------------------------------------------


def test_checkpoint_size_and_contents() -> None:
    assert DEMO_CHECKPOINT.is_file()
    assert DEMO_CHECKPOINT.stat().st_size <= 2 * 1024 * 1024
    state = load_file(str(DEMO_CHECKPOINT))
    assert set(state) == set(DemoNet().state_dict())
    # BN running statistics must be there, or eval-mode outputs would not match training.
    assert any(k.endswith("running_mean") for k in state)
    assert any(k.endswith("running_var") for k in state)


def test_metrics_file_fields(metrics: dict) -> None:
    for key in ("test_top1", "train_top1", "test_correct", "epochs", "seed", "n_train", "n_test", "torch_version"):
        assert key in metrics, key
    assert 0.95 <= metrics["test_top1"] <= 1.0
    assert metrics["test_correct"] == round(metrics["test_top1"] * metrics["n_test"])


def test_checkpoint_reproduces_reported_accuracy(metrics: dict) -> None:
    split = digits_split(metrics["seed"])
    assert len(split.test_y) == metrics["n_test"]
    assert len(split.train_y) == metrics["n_train"]
    model = load_demo_model()
    assert not model.training
    acc = accuracy(model, split.test_x, split.test_y)
    assert round(acc * len(split.test_y)) == metrics["test_correct"]
    assert acc == metrics["test_top1"]


def test_load_demo_model_strict_and_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_demo_model(tmp_path / "nope.safetensors")
    # A checkpoint with an extra key must be refused: loading is strict.
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in load_file(str(DEMO_CHECKPOINT)).items()}
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(RuntimeError):
        load_demo_model(bad)


# --- architecture ---------------------------------------------------------------------


def test_architecture() -> None:
    model = DemoNet()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) >= 4
    assert len(bns) == len(convs)
    last_name, last = list(model.named_modules())[-1]
    assert last_name == "fc" and isinstance(last, nn.Linear)
    assert last.out_features == DEMO_CLASSES
    out = model.eval()(torch.zeros(DEMO_INPUT_SHAPE))
    assert out.shape == (DEMO_INPUT_SHAPE[0], DEMO_CLASSES)


def test_fx_traceable() -> None:
    model = load_demo_model()
    traced = torch.fx.symbolic_trace(model)
    adds = [n for n in traced.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) >= 2  # the two residual skips
    x = torch.rand(5, *DEMO_INPUT_SHAPE[1:])
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


# --- data -----------------------------------------------------------------------------


def test_split_disjoint_deterministic(split) -> None:
    train_idx = set(split.train_index.tolist())
    test_idx = set(split.test_index.tolist())
    assert not train_idx & test_idx
    assert len(train_idx) + len(test_idx) == 1797  # every digit used exactly once
    again = digits_split(0)
    assert torch.equal(again.test_index, split.test_index)
    assert torch.equal(again.test_x, split.test_x)
    assert torch.equal(again.train_y, split.train_y)
    assert not torch.equal(digits_split(1).test_index, split.test_index)


def test_split_format(split) -> None:
    for x, y in ((split.train_x, split.train_y), (split.test_x, split.test_y)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == DEMO_INPUT_SHAPE[1:] and len(x) == len(y)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # Stratified: every class present in the test part, in roughly a quarter of its samples.
    counts = torch.bincount(split.test_y, minlength=DEMO_CLASSES)
    assert int(counts.min()) >= 40
    assert abs(len(split.test_y) / 1797 - 0.25) < 0.01


# --- training -------------------------------------------------------------------------


def test_short_training_is_bit_reproducible() -> None:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    rng_before = torch.get_rng_state()
    calls: list[tuple[int, int, float]] = []
    m1, met1 = train_demo(seed=3, epochs=2, progress=lambda e, n, loss: calls.append((e, n, loss)))
    m2, met2 = train_demo(seed=3, epochs=2)
    _assert_same_state(m1, m2)
    assert met1 == met2
    assert not m1.training
    assert [c[:2] for c in calls] == [(1, 2), (2, 2)]
    assert all(c[2] > 0 for c in calls)
    # Process-wide settings and the caller's RNG are left as they were.
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert set(met1) >= {"test_top1", "train_top1", "epochs", "seed"}
    assert met1["epochs"] == 2 and met1["seed"] == 3


def test_should_stop_cancels() -> None:
    polls = {"n": 0}

    def stop() -> bool:
        polls["n"] += 1
        return polls["n"] > 3

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with pytest.raises(TrainingCancelled):
        train_demo(seed=0, epochs=5, should_stop=stop)
    assert polls["n"] == 4  # stopped promptly, mid-epoch
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_bad_epochs() -> None:
    with pytest.raises(ValueError):
        train_demo(epochs=0)


# --- saving and helpers ---------------------------------------------------------------


def test_save_round_trip(tmp_path: Path) -> None:
    model = load_demo_model()
    weights, metrics_path = save_demo_checkpoint(model, {"test_top1": 0.5, "seed": 0}, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["demo.json", "demo.safetensors"]
    _assert_same_state(load_demo_model(weights), model)
    record = json.loads(metrics_path.read_text())
    assert record["test_top1"] == 0.5 and record["torch_version"] == torch.__version__


def test_accuracy_restores_mode_and_checks_lengths(split) -> None:
    model = load_demo_model().train()
    acc = accuracy(model, split.test_x[:50], split.test_y[:50], batch_size=7)
    assert 0.0 <= acc <= 1.0
    assert model.training
    with pytest.raises(ValueError):
        accuracy(model, split.test_x[:5], split.test_y[:4])
