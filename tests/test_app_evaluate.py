"""AppTest: the Evaluate page (current plan, sweep, sensitivity, budgeted plan, zip upload) and the explainer."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fpgm_core
from app_jobs import finish_jobs, running_jobs
from fpgm_core.evaluation import demo_data, evaluate_model

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = "pages/evaluate.py"
EXPLAINER = "pages/explainer.py"
# Until app.py lists these pages, they run under a minimal entry that sets the session up as app.py does.
HARNESS = '''
import streamlit as st
from dashboard.state import init_state
init_state()
st.navigation([
    st.Page("pages/evaluate.py", title="Evaluate", url_path="evaluate", default=True),
    st.Page("pages/explainer.py", title="How FPGM works", url_path="explainer"),
    st.Page("pages/sparsity.py", title="Sparsity", url_path="sparsity"),
    st.Page("pages/heatmaps.py", title="Heatmaps", url_path="heatmaps"),
    st.Page("pages/model.py", title="Model", url_path="model"),
]).run()
'''


# The demo's 8×8 convolutions are too small to split across threads (see conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def entry(tmp_path_factory) -> Path:
    app = ROOT / "app.py"
    if EVALUATE in app.read_text() and EXPLAINER in app.read_text():
        return app
    folder = tmp_path_factory.mktemp("entry")
    (folder / "pages").symlink_to(ROOT / "pages", target_is_directory=True)
    (folder / "app.py").write_text(HARNESS)
    return folder / "app.py"


@pytest.fixture
def open_page(entry):
    from streamlit.testing.v1 import AppTest

    def start(page: str, **state):
        app = AppTest.from_file(str(entry), default_timeout=120)
        app.run()
        assert not app.exception, app.exception
        for key, value in state.items():
            app.session_state[key] = value
        app.switch_page(page).run()
        assert not app.exception, app.exception
        return app

    return start


@pytest.fixture(scope="module")
def original() -> float:
    return evaluate_model(fpgm_core.build_model("demo", "default").model, demo_data()).top1


def metrics(app) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def digit_zip(name: str | None = None) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buffer, "w") as archive:
        for digit in range(3):
            for i in range(2):
                image = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(image, "PNG")
                archive.writestr(f"digits/{digit}/{i}.png", image.getvalue())
        if name is not None:
            archive.writestr(name, b"x")
    return buffer.getvalue()


def test_current_plan_at_zero_sparsity_is_the_original_model(open_page, original):
    app = open_page(EVALUATE, sparsity_pct=0)
    values = metrics(app)
    assert values["Top-1"] == f"{original:.1%}" and values["Agreement"] == "100.0%"
    app.session_state["sparsity_pct"] = 90
    app.run()
    assert not app.exception
    assert float(metrics(app)["Top-1"].rstrip("%")) / 100 < original - 0.2


def test_sweep_draws_every_criterion_from_the_original_down(open_page, original):
    app = open_page(EVALUATE)
    app.multiselect(key="eval_criteria").set_value(["fpgm-l2", "norm-l2", "random"])
    app.number_input(key="eval_seeds").set_value(2)
    app.button(key="eval_run_sweep").click().run()
    assert not app.exception, app.exception
    finish_jobs(app)
    table = app.dataframe[0].value
    assert list(table.columns) == ["FPGM (L2)", "smallest L2 norm", "random"]
    assert list(table.index) == [f"{10 * i}%" for i in range(10)]
    assert (table.loc["0%"] == original).all()
    assert (table.loc["90%"] < original - 0.2).all()
    assert not running_jobs(app)
    # The result is kept: switching what is shown does not run the sweep again.
    app.radio(key="eval_measure").set_value("agreement").run()
    assert not app.exception and (app.dataframe[0].value.loc["0%"] == 1.0).all()


def test_sensitivity_suggestion_loads_into_the_sparsity_page(open_page, original):
    app = open_page(EVALUATE)
    app.button(key="eval_run_sensitivity").click().run()
    assert not app.exception, app.exception
    finish_jobs(app)
    app.number_input(key="eval_budget").set_value(1.0)
    app.button(key="eval_run_suggest").click().run()
    assert not app.exception, app.exception
    finish_jobs(app)
    verified = metrics(app)["Verified top-1"]
    assert float(verified.rstrip("%")) / 100 >= original - 0.01 - 0.0005
    app.button(key="eval_load_plan").click().run()
    assert not app.exception, app.exception
    assert app.title[0].value == "Sparsity"
    overrides = app.session_state["workspace"].overrides
    assert overrides and app.session_state["sparsity_pct"] == 0 and app.session_state["mode"] == "uniform"
    layers = {layer.name: layer.filters for layer in fpgm_core.prunable_layers(fpgm_core.build_model("demo", "default").model)}
    pruned = app.data_editor[0].value["pruned"]
    assert {name: int(count) for name, count in pruned.items() if count} == {
        name: fpgm_core.prune_count(s, layers[name]) for name, s in overrides.items() if fpgm_core.prune_count(s, layers[name])
    }


def test_an_uploaded_image_folder_zip_is_evaluated(open_page):
    app = open_page(EVALUATE)
    app.radio(key="eval_data_kind").set_value("zip").run()
    assert not app.exception and app.info  # asks for the zip, explaining the layout
    app.file_uploader(key="eval_zip").set_value(("digits.zip", digit_zip(), "application/zip")).run()
    assert not app.exception, app.exception
    assert any("6 images in 3 folders" in caption.value for caption in app.caption)
    assert "Top-1" in metrics(app)


def test_a_hostile_zip_is_refused_on_the_page(open_page):
    app = open_page(EVALUATE)
    app.radio(key="eval_data_kind").set_value("zip").run()
    app.file_uploader(key="eval_zip").set_value(("evil.zip", digit_zip("../../escaped.png"), "application/zip")).run()
    assert not app.exception
    assert any("outside the archive" in error.value for error in app.error)
    assert "Top-1" not in metrics(app)


def test_a_running_sweep_shows_progress_and_a_stopped_one_is_not_restarted(open_page):
    # The sweep after fine-tuning: each point trains for seconds, so Stop always lands mid-run.
    app = open_page(EVALUATE)
    app.button(key="eval_run_ft_sweep").click().run()
    assert not app.exception, app.exception
    assert running_jobs(app), "the sweep should run in the background"
    assert app.get("progress") and app.button(key="job_stop_eval_ft_sweep")
    app.button(key="job_stop_eval_ft_sweep").click().run()
    finish_jobs(app)
    assert any(info.value.startswith("Stopped") for info in app.info)
    assert not any("fine-tuned" in frame.value.columns for frame in app.dataframe)
    app.run()
    assert not app.exception and not running_jobs(app)
    assert any(caption.value.startswith("Run it to see") for caption in app.caption)


def test_the_sweep_after_fine_tuning_shows_what_training_wins_back(open_page):
    app = open_page(EVALUATE)
    app.multiselect(key="eval_ft_criteria").set_value(["fpgm-l2", "norm-l2"])
    app.multiselect(key="eval_ft_sparsities").set_value([50])
    app.number_input(key="eval_ft_seeds").set_value(1)
    app.number_input(key="eval_ft_epochs").set_value(2)
    app.button(key="eval_run_ft_sweep").click().run()
    finish_jobs(app)
    table = next(frame.value for frame in app.dataframe if "fine-tuned" in frame.value.columns)
    assert list(table["criterion"]) == ["FPGM (L2)", "smallest L2 norm"] and list(table["sparsity"]) == ["50%", "50%"]
    for pruned, tuned in zip(table["pruned"], table["fine-tuned"]):
        assert float(tuned.split()[0]) > float(pruned.split()[0]) + 50
    assert app.get("plotly_chart")


def test_explainer_shows_norm_and_fpgm_picks_live(open_page):
    app = open_page(EXPLAINER)
    table = app.dataframe[0].value
    assert list(table["norm drops"]) == ["", "", "✂"] and list(table["FPGM drops"]) == ["", "✂", ""]
    app.number_input(key="explain_b").set_value(0.05).run()
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["norm drops"]) == ["", "✂", ""] and list(table["FPGM drops"]) == ["", "", "✂"]


def test_explainer_live_layer_opens_in_heatmaps(open_page):
    app = open_page(EXPLAINER)
    app.selectbox(key="explain_layer").set_value("down").run()
    app.slider(key="explain_pct").set_value(50).run()
    assert not app.exception
    assert any("16 of 32 filters pruned" in markdown.value for markdown in app.markdown)
    app.button(key="explain_open_heatmaps").click().run()
    assert not app.exception, app.exception
    assert app.title[0].value == "Filter distances" and app.session_state["heat_layer"] == "down"
