"""FPGM dashboard: ``streamlit run app.py``.

Builds the navigation over the pages (Model, Heatmaps, Sparsity, Export, Evaluate, Fine-tune, How FPGM works), initialises the
session's state once, and shows what the session is working on in the sidebar.
"""

import streamlit as st

from dashboard import download_grace
from dashboard.state import current_plan, follow_deep_link, init_state, plan_description

# Files built when a download button is clicked must survive other sessions' cleanup until fetched.
download_grace.install()
st.set_page_config(layout="wide", page_title="FPGM dashboard", page_icon=":material/content_cut:")
init_state()

navigation = st.navigation(
    [
        st.Page("pages/model.py", title="Model", icon=":material/memory:", url_path="model"),
        st.Page("pages/heatmaps.py", title="Heatmaps", icon=":material/grid_on:", url_path="heatmaps", default=True),
        st.Page("pages/sparsity.py", title="Sparsity", icon=":material/tune:", url_path="sparsity"),
        st.Page("pages/export.py", title="Export", icon=":material/download:", url_path="export"),
        st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:", url_path="evaluate"),
        st.Page("pages/finetune.py", title="Fine-tune", icon=":material/trending_up:", url_path="finetune"),
        st.Page("pages/explainer.py", title="How FPGM works", icon=":material/school:", url_path="explainer"),
    ]
)
follow_deep_link()

with st.sidebar:
    session = st.session_state
    st.caption("Working on")
    st.markdown(f"**{session.source.label()}**  \non `{session.device}`")
    st.caption(f"Plan: {plan_description(current_plan())}")
    st.caption("Filter Pruning via Geometric Median (He et al., CVPR 2019): filters nearest the layer's geometric median are the most replaceable.")

navigation.run()
