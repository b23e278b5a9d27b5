"""AppTest: the Fine-tune page (start, progress, stop, result), its model on Export and Evaluate, and its release.

Fine-tunes run in a background thread; the tests wait for them the way the page does (the job's
thread), then rerun the page. The demo fine-tunes in about a second an epoch here.
"""

from __future__ import annotations

import io
import json
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors

import fpgm_core
from app_jobs import finish_jobs, running_jobs
from test_app_export import content  # the downloads fixture is in conftest.py
from fpgm_core.demo import digits_split

FINETUNE, EXPORT, EVALUATE = "pages/finetune.py", "pages/export.py", "pages/evaluate.py"
STEM = "demo-fpgm-finetuned"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fine_tuned(app, epochs: int = 2, **widgets):
    """Start a fine-tune on the page and wait for it; returns the app showing the result."""
    app.number_input(key="ft_epochs").set_value(epochs).run()
    for key, value in widgets.items():
        app.session_state[key] = value
    app.button(key="ft_start").click().run()
    assert not app.exception, app.exception
    return finish_jobs(app)


def metrics(app) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def test_start_shows_progress_and_a_live_chart_then_the_sessions_model(new_app):
    app = new_app(FINETUNE)
    assert app.title[0].value == "Fine-tune" and not app.get("progress")
    cached = fpgm_core.model_fingerprint(fpgm_core.build_model("demo", "default").model)
    app.number_input(key="ft_epochs").set_value(4).run()
    app.button(key="ft_start").click().run()
    assert not app.exception, app.exception
    job = running_jobs(app)[0]
    assert app.get("progress") and app.button(key="job_stop_finetune") and app.button(key="ft_start").disabled
    deadline = time.monotonic() + 120
    while len(job.snapshot()[2]) < 2 and time.monotonic() < deadline:  # epoch 0 and epoch 1
        time.sleep(0.1)
    app.run()
    if job.running:  # the chart grows while it trains
        assert app.get("plotly_chart"), "no live chart while training"
    finish_jobs(app)
    values = metrics(app)
    assert float(values["Held-out top-1, fine-tuned"].rstrip("%")) >= 97.0
    assert float(values["Pruned, not trained"].rstrip("%")) < 50.0 and values["Unpruned"] == "98.9%"
    kept = app.session_state["finetuned"]
    assert [record.epoch for record in kept.result.history] == [0, 1, 2, 3, 4]
    modules = dict(kept.result.model.named_modules())
    for name, keep in kept.result.masks.items():
        assert bool(modules[name].weight.detach()[~keep].eq(0).all())
    # The cached model the session works on is untouched.
    source, device = app.session_state["workspace"].source, app.session_state["device"]
    from dashboard import cache

    assert fpgm_core.model_fingerprint(cache.load_model(source, device).model) == cached


def test_stopping_midway_keeps_the_model_the_plan_and_the_earlier_result(new_app):
    app = new_app(FINETUNE)
    fine_tuned(app, epochs=1)
    earlier = app.session_state["finetuned"]
    plan_before = (app.session_state["sparsity_pct"], app.session_state["workspace"].overrides, app.session_state["workspace"].source)
    app.number_input(key="ft_epochs").set_value(100).run()
    app.button(key="ft_start").click().run()
    job = running_jobs(app)[0]
    deadline = time.monotonic() + 120
    while len(job.snapshot()[2]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    app.run()
    app.button(key="job_stop_finetune").click().run()
    finish_jobs(app)
    assert job.state == "stopped"
    assert any(info.value.startswith("Stopped after") for info in app.info)
    assert app.session_state["finetuned"] is earlier
    assert (app.session_state["sparsity_pct"], app.session_state["workspace"].overrides, app.session_state["workspace"].source) == plan_before
    assert "Held-out top-1, fine-tuned" in metrics(app)  # the earlier result is still shown


def test_export_offers_the_fine_tuned_checkpoint_and_its_slimmed_model(new_app, downloads):
    app = new_app(FINETUNE)
    fine_tuned(app, epochs=2)
    kept = app.session_state["finetuned"]
    app.switch_page(EXPORT).run()
    assert not app.exception, app.exception
    labels = [button.label for button in app.download_button]
    assert {f"{STEM}.safetensors", f"{STEM}.masks.safetensors", f"{STEM}.recipe.json", f"{STEM}.history.json"} <= set(labels)
    assert "demo-fpgm.safetensors" in labels  # the untrained files stay beside them
    state = load_safetensors(content(downloads, f"{STEM}.safetensors"))
    masks = load_safetensors(content(downloads, f"{STEM}.masks.safetensors"))
    model = fpgm_core.build_model("demo", "none").model
    model.load_state_dict(state, strict=True)
    modules = dict(model.named_modules())
    for name, keep in masks.items():
        assert torch.equal(keep, kept.result.masks[name])
        assert bool(modules[name].weight.detach()[~keep].eq(0).all())
    recipe = json.loads(content(downloads, f"{STEM}.recipe.json"))
    assert recipe["finetune"]["settings"]["epochs"] == 2 and recipe["group_consistent"] is True
    assert recipe["finetune"]["result"]["fingerprint"] == fpgm_core.model_fingerprint(model)
    app.button(key="slim_ft_button").click().run()
    assert not app.exception, app.exception
    assert any("Verification **passed**" in markdown.value for markdown in app.markdown)
    program = torch.export.load(io.BytesIO(content(downloads, f"{STEM}-slim.pt2"))).module()
    images = digits_split(0).test_x
    with torch.no_grad():
        slimmed, masked = program(images), model.eval()(images)
    assert float((slimmed - masked).abs().max()) <= 1e-5 * float(masked.abs().max())


def test_evaluate_shows_the_fine_tuned_model_and_a_plan_change_releases_it(new_app):
    app = new_app(FINETUNE)
    fine_tuned(app, epochs=2)
    app.switch_page(EVALUATE).run()
    assert not app.exception, app.exception
    values = metrics(app)
    assert float(values["Top-1 (fine-tuned)"].rstrip("%")) > float(values["Top-1"].rstrip("%")) + 30
    app.session_state["sparsity_pct"] = 40
    app.run()
    assert "Top-1 (fine-tuned)" not in metrics(app)
    assert "finetuned" not in app.session_state
    app.switch_page(EXPORT).run()
    assert not any(button.label.startswith(STEM) for button in app.download_button)


def test_a_plan_that_prunes_nothing_has_nothing_to_fine_tune(new_app):
    app = new_app()
    app.session_state["sparsity_pct"] = 0
    app.switch_page(FINETUNE).run()
    assert not app.exception
    assert any("prunes nothing" in info.value for info in app.info)
    assert not [button for button in app.button if button.key == "ft_start"]


def _digit_zip(train_val: bool) -> bytes:
    split = digits_split(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(60):
            image = io.BytesIO()
            Image.fromarray((split.train_x[i, 0].numpy() * 255).astype(np.uint8), mode="L").save(image, "PNG")
            part = ("val" if i % 4 == 0 else "train") + "/" if train_val else ""
            archive.writestr(f"{part}{int(split.train_y[i])}/{i}.png", image.getvalue())
    return buffer.getvalue()


def test_a_zip_with_train_and_val_folders_fine_tunes_and_a_bad_one_says_why(new_app):
    app = new_app(FINETUNE)
    app.radio(key="ft_data_kind").set_value("zip").run()
    assert app.button(key="ft_start").disabled and app.info
    app.file_uploader(key="ft_zip").set_value(("nothing.zip", _empty_zip(), "application/zip")).run()
    assert not app.exception and any("no images" in error.value for error in app.error)
    assert app.button(key="ft_start").disabled
    app.file_uploader(key="ft_zip").set_value(("digits.zip", _digit_zip(True), "application/zip")).run()
    assert not app.exception, app.exception
    assert any("45 training, 15 held-out" in caption.value for caption in app.caption)
    fine_tuned(app, epochs=1)
    assert app.session_state["finetuned"].result.data["split"] == "folders"


def _empty_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cats/readme.txt", "no pictures")
    return buffer.getvalue()


def test_a_fine_tune_that_ends_on_another_page_is_there_and_a_plan_change_drops_it(new_app):
    app = new_app(FINETUNE)
    app.number_input(key="ft_epochs").set_value(1).run()
    app.button(key="ft_start").click().run()
    job = running_jobs(app)[0]
    app.switch_page(EXPORT).run()
    assert job.wait(300)
    app.run()
    assert any(button.label == f"{STEM}.safetensors" for button in app.download_button)

    app.switch_page(FINETUNE).run()
    app.button(key="ft_start").click().run()
    job = running_jobs(app)[0]
    app.session_state["sparsity_pct"] = 50  # the plan changes while it trains
    assert job.wait(300)
    app.run()
    assert not app.exception, app.exception
    assert any("was dropped" in warning.value for warning in app.warning)
    assert "finetuned" not in app.session_state
