"""fpgm_core.distance: scores and matrices against the reference and against direct computation."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fpgm_core.distance as distance
from fpgm_core import PlanError, distance_matrix, fpgm_scores
from seed_oracle import seed_scores

SHAPES = [(3, 1, 1, 1), (64, 3, 7, 7), (37, 5), (16, 4, 3), (8, 2, 3, 3, 3), (300, 128, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("metric,dist", [("l1", 1), ("l2", 2)])
def test_scores_match_seed(shape, metric, dist):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ours = fpgm_scores(weight, metric, device="cpu")
    reference = seed_scores(weight, dist).double()
    assert ours.shape == (shape[0],)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_l2_is_more_exact_than_float32_cdist_against_float64_truth():
    weight = torch.randn(257, 300, generator=torch.Generator().manual_seed(2)) + 50.0
    truth = torch.cdist(weight.double(), weight.double(), compute_mode="donot_use_mm_for_euclid_dist").sum(1)
    ours = fpgm_scores(weight, "l2", device="cpu")
    assert ((ours - truth).abs() / truth).max() < 1e-6


def test_custom_callable_metric_matches_seed():
    def chebyshev(x):
        return torch.cdist(x, x, p=float("inf"))

    weight = torch.randn(20, 3, 3, 3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fpgm_scores(weight, chebyshev, device="cpu"), seed_scores(weight, chebyshev).double())


def test_cosine_scores_are_summed_one_minus_cosine_similarity():
    weight = torch.randn(30, 12, generator=torch.Generator().manual_seed(4)).double()
    unit = weight / weight.norm(dim=1, keepdim=True)
    expected = (1 - unit @ unit.T).fill_diagonal_(0).sum(1)
    torch.testing.assert_close(fpgm_scores(weight, "cosine", device="cpu"), expected)


def test_cosine_zero_filter_is_at_distance_one_from_all():
    weight = torch.randn(5, 4, generator=torch.Generator().manual_seed(5))
    weight[2] = 0
    matrix = distance_matrix(weight, "cosine", device="cpu")
    assert torch.equal(matrix[2], torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("metric,p", [("l1", 1.0), ("l2", 2.0)])
def test_distance_matrix_equals_cdist_and_sums_to_scores(metric, p):
    weight = torch.randn(70, 4, 3, 3, generator=torch.Generator().manual_seed(6)).double()
    flat = weight.reshape(70, -1)
    matrix = distance_matrix(weight, metric, device="cpu")
    torch.testing.assert_close(matrix, torch.cdist(flat, flat, p=p, compute_mode="donot_use_mm_for_euclid_dist"))
    assert torch.equal(matrix, matrix.T)
    assert torch.all(matrix.diagonal() == 0)
    torch.testing.assert_close(matrix.sum(1), fpgm_scores(weight, metric, device="cpu"))


@pytest.mark.parametrize("metric", ["l1", "l2", "cosine"])
def test_blocked_and_chunked_paths_equal_one_block(metric, monkeypatch):
    weight = torch.randn(53, 40, generator=torch.Generator().manual_seed(7)).double()
    whole_scores = fpgm_scores(weight, metric, device="cpu")
    whole_matrix = distance_matrix(weight, metric, device="cpu")
    monkeypatch.setattr(distance, "_CPU_BLOCK", 8)
    monkeypatch.setattr(distance, "_MIN_BLOCK", 8)
    # Leaves of at most 5 filters and tiles of 3 rows: several levels of halving, short last tiles.
    monkeypatch.setattr(distance, "_CPU_LEAF", 5)
    monkeypatch.setattr(distance, "_CPU_TILE", 3)
    monkeypatch.setattr(distance, "_L1_CHUNK_ELEMENTS", 53 * 3)
    torch.testing.assert_close(fpgm_scores(weight, metric, device="cpu"), whole_scores)
    if metric != "l1":
        torch.testing.assert_close(distance_matrix(weight, metric, device="cpu"), whole_matrix)


def test_l1_sort_orders_signed_zeros_subnormals_and_extremes():
    # The CPU sort packs each float32's bits into an integer key: every kind of float must keep its order.
    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 3e38, -3e38, 1.0, -1.0, 1.0, 0.5, -2.5])
    weight = torch.stack([special.roll(k) for k in range(len(special))]).T.contiguous()  # 13 filters × 13
    expected = torch.cdist(weight.double(), weight.double(), p=1).sum(1)
    torch.testing.assert_close(fpgm_scores(weight, "l1", device="cpu"), expected, rtol=1e-12, atol=0)
    values, order = distance._sort_rows(weight)
    torch.testing.assert_close(values, weight.sort(dim=1).values, rtol=0, atol=0)
    assert torch.equal(weight.gather(1, order), values)


def test_l1_scores_exact_with_repeated_values():
    # Ties inside a coordinate must not change the sum of absolute differences.
    weight = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 1.0], [0.0, -3.0]])
    expected = torch.cdist(weight.double(), weight.double(), p=1).sum(1)
    torch.testing.assert_close(fpgm_scores(weight, "l1", device="cpu"), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_give_float64_scores_close_to_float32(dtype):
    weight = torch.randn(24, 9, generator=torch.Generator().manual_seed(8)).to(dtype)
    scores = fpgm_scores(weight, "l2", device="cpu")
    assert scores.dtype == torch.float64
    torch.testing.assert_close(scores, fpgm_scores(weight.float(), "l2", device="cpu"), rtol=1e-5, atol=1e-5)


def test_scores_leave_weight_and_grad_state_alone():
    layer = torch.nn.Conv2d(3, 8, 3)
    before = layer.weight.detach().clone()
    scores = fpgm_scores(layer.weight, device="cpu")
    assert not scores.requires_grad
    assert torch.equal(layer.weight, before)


@pytest.mark.parametrize(
    "weight,metric,message",
    [
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "l2", "NaN or Inf"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "l1", "NaN or Inf"),
        (torch.randn(4, 3), "l3", "unknown metric"),
        (torch.randn(4, 3), lambda x: x, "N×N"),
        (torch.empty(0, 3), "l2", "no filters"),
    ],
)
def test_bad_input_names_the_problem(weight, metric, message):
    with pytest.raises(PlanError, match=message):
        fpgm_scores(weight, metric, device="cpu")


def test_unavailable_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    from fpgm_core import FpgmError

    with pytest.raises(FpgmError, match="CUDA is not available"):
        fpgm_scores(torch.randn(4, 3), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("metric", ["l1", "l2", "cosine"])
def test_cuda_agrees_with_cpu(metric):
    weight = torch.randn(700, 64, 3, 3, generator=torch.Generator().manual_seed(9))
    cpu = fpgm_scores(weight, metric, device="cpu")
    cuda = fpgm_scores(weight, metric, device="cuda").cpu()
    torch.testing.assert_close(cuda, cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        distance_matrix(weight, metric, device="cuda").cpu(), distance_matrix(weight, metric, device="cpu"), rtol=1e-4, atol=1e-3
    )


@pytest.mark.parametrize("metric", ["l1", "l2", "cosine"])
@pytest.mark.parametrize("n,size", [(50, 7), (64, 16), (10, 20)])
def test_pooled_matrix_is_the_block_mean_of_the_full_matrix(metric, n, size, monkeypatch):
    monkeypatch.setattr(distance, "_CPU_BLOCK", 8)
    monkeypatch.setattr(distance, "_MIN_BLOCK", 8)
    weight = torch.randn(n, 6, generator=torch.Generator().manual_seed(n)).double()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    pooled, group = distance.pooled_distance_matrix(weight, metric, size=size, order=order, device="cpu")
    full = distance_matrix(weight[order], metric, device="cpu")
    assert group == -(-n // size) and pooled.shape[0] == -(-n // group)
    for a in range(pooled.shape[0]):
        for b in range(pooled.shape[0]):
            expected = full[a * group : (a + 1) * group, b * group : (b + 1) * group].mean()
            torch.testing.assert_close(pooled[a, b], expected.double())


POOLED_PEAK = """
import resource, sys, torch
from fpgm_core import distance
torch.set_num_threads(1)
weight = torch.randn(16384, 64, generator=torch.Generator().manual_seed(0))
distance.pooled_distance_matrix(weight[:1024], "l2", size=512, device="cpu")  # warm up the code paths
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pooled, group = distance.pooled_distance_matrix(weight, "l2", size=512, device="cpu")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert pooled.shape == (512, 512) and group == 32 and torch.equal(pooled, pooled.T)
print((after - before) / 1024)  # ru_maxrss is in KiB on Linux: MB above the high-water mark so far
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB is Linux's")
def test_pooled_view_of_a_16384_filter_layer_stays_small():
    # Measured in a fresh process: the growth of its peak resident memory during the call. The
    # full 16384² matrix would need 1 GiB in float32 (2 GiB in float64).
    result = subprocess.run([sys.executable, "-c", POOLED_PEAK], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    peak_mb = float(result.stdout.strip().splitlines()[-1])
    assert peak_mb < 128, f"the pooled view raised peak memory by {peak_mb:.0f} MB"
