"""The bundled demo source: :class:`fpgm_core.demo.DemoNet` with its committed weights (no download)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelLoadError
from .checkpoints import load_weights, read_state_dict
from .loaded import LoadedModel, seeded_init

__all__ = ["build_demo"]


def build_demo(weights: str | os.PathLike = "default") -> LoadedModel:
    """The demo digits CNN: ``default`` (or ``demo``) bundled weights, ``none`` random init, or a state_dict file."""
    from .. import demo

    weights = str(weights)
    with seeded_init():
        model = demo.DemoNet()
    if weights in ("default", "demo"):
        try:
            model = demo.load_demo_model()
        except FileNotFoundError as exc:
            raise ModelLoadError(f"the bundled demo weights are missing ({demo.DEMO_CHECKPOINT}); run `python -m fpgm_core demo-train`") from exc
    elif weights != "none":
        load_weights(model, read_state_dict(weights))
    name = weights if weights in ("none", "default", "demo") else Path(weights).name
    return LoadedModel(model.eval(), "demo", "default" if name == "demo" else name, tuple(demo.DEMO_INPUT_SHAPE))
