"""fpgm_core: Filter Pruning via Geometric Median — scores, masks, plans and exports in pure PyTorch.

The engine behind the fpgm-dashboard; usable on its own from Python or ``python -m fpgm_core``.
It never imports Streamlit.
"""

from ._version import __version__
from .counting import CostSummary, count_flops, count_parameters, estimate_pruned_costs, input_producers, layer_flops
from .devices import available_devices, resolve_device
from .distance import METRICS, Metric, distance_matrix, fpgm_scores, pooled_distance_matrix
from .errors import ExportError, FpgmError, FpgmWarning, ModelLoadError, PlanError, TracingFallbackWarning
from .export import ExportedFiles, export_masked, export_paths, serialize_tensors, verified_masked_state, write_atomically
from .layers import LayerInfo, layer_filters, output_layer_names, prunable_layers
from .masking import MaskCheckError, apply_masks, following_batchnorms, following_norms, verify_masked
from .masks import check_sparsity, fpgm_mask, mask_from_scores, prune_count
from .models import LoadedModel, build_model, classification_architectures, load_weights, read_state_dict, state_dict_mismatch
from .plan import SparsityPlan, layer_scores, plan_counts, plan_masks, targeted_layers
from .recipe import make_recipe, model_fingerprint, plan_from_recipe, read_recipe, recipe_json

__all__ = [
    "__version__",
    "METRICS",
    "Metric",
    "fpgm_scores",
    "distance_matrix",
    "pooled_distance_matrix",
    "fpgm_mask",
    "prune_count",
    "mask_from_scores",
    "check_sparsity",
    "LayerInfo",
    "prunable_layers",
    "output_layer_names",
    "layer_filters",
    "SparsityPlan",
    "layer_scores",
    "plan_counts",
    "plan_masks",
    "targeted_layers",
    "apply_masks",
    "following_batchnorms",
    "following_norms",
    "verify_masked",
    "MaskCheckError",
    "make_recipe",
    "plan_from_recipe",
    "read_recipe",
    "recipe_json",
    "model_fingerprint",
    "ExportedFiles",
    "export_masked",
    "verified_masked_state",
    "export_paths",
    "serialize_tensors",
    "write_atomically",
    "LoadedModel",
    "build_model",
    "classification_architectures",
    "read_state_dict",
    "load_weights",
    "state_dict_mismatch",
    "CostSummary",
    "count_parameters",
    "count_flops",
    "layer_flops",
    "input_producers",
    "estimate_pruned_costs",
    "resolve_device",
    "available_devices",
    "FpgmError",
    "ModelLoadError",
    "PlanError",
    "ExportError",
    "FpgmWarning",
    "TracingFallbackWarning",
]
