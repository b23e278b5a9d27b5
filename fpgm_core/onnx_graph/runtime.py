"""Run an ONNX graph in onnxruntime (CPU) on numpy inputs."""

from __future__ import annotations

import numpy as np

__all__ = ["inference_session", "input_dtype", "run"]


def inference_session(model):
    """An onnxruntime CPU session of a ModelProto; logs quiet, graph optimisations that keep every output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Basic optimisations only: fusing Conv with a following op must never hide a value we read.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def input_dtype(value_info) -> np.dtype:
    """The numpy dtype of a graph input (float32 when it does not say)."""
    import onnx

    elem = value_info.type.tensor_type.elem_type
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype(np.float32)


def run(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All outputs of ``session`` by name."""
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))
