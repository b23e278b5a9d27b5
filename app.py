"""FPGM dashboard: ``streamlit run app.py``.

Builds the navigation over the pages (Model, Heatmaps, Sparsity, Export, Evaluate, Fine-tune, How FPGM works),
initialises the session's state (from the URL, for a shared link), keeps the URL a link to the view, and shows what
the session is working on in the sidebar.
"""

import streamlit as st

from dashboard import download_grace, links
from dashboard.state import current_plan, follow_deep_link, init_state, page_drawn, plan_description, workspace

# Files built when a download button is clicked must survive other sessions' cleanup until fetched.
download_grace.install()
st.set_page_config(layout="wide", page_title="FPGM dashboard", page_icon=":material/content_cut:")
init_state(links.opened_view)

HEATMAPS = st.Page("pages/heatmaps.py", title="Heatmaps", icon=":material/grid_on:", url_path="heatmaps")


def _root() -> None:
    # The root URL opens the Heatmaps page at its own URL, so that /heatmaps works as a link too
    # (Streamlit serves the default page at / only); the link's view comes along.
    st.switch_page(HEATMAPS, query_params=st.query_params.to_dict())


navigation = st.navigation(
    [
        st.Page(_root, title="FPGM dashboard", url_path="start", default=True, visibility="hidden"),
        st.Page("pages/model.py", title="Model", icon=":material/memory:", url_path="model"),
        HEATMAPS,
        st.Page("pages/sparsity.py", title="Sparsity", icon=":material/tune:", url_path="sparsity"),
        st.Page("pages/export.py", title="Export", icon=":material/download:", url_path="export"),
        st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:", url_path="evaluate"),
        st.Page("pages/finetune.py", title="Fine-tune", icon=":material/trending_up:", url_path="finetune"),
        st.Page("pages/explainer.py", title="How FPGM works", icon=":material/school:", url_path="explainer"),
    ]
)
follow_deep_link()
links.publish()

with st.sidebar:
    st.caption("Working on")
    st.markdown(f"**{workspace().source.label()}**  \non `{st.session_state.device}`")
    caveat = links.not_carried(workspace().source)
    if caveat:
        st.caption(caveat)
    st.caption(f"Plan: {plan_description(current_plan())}")
    st.caption("Filter Pruning via Geometric Median (He et al., CVPR 2019): filters nearest the layer's geometric median are the most replaceable.")

links.show_notice(navigation.url_path)
navigation.run()
page_drawn(navigation.url_path)
links.publish()  # what the page changed (a layer picked for a new model)
