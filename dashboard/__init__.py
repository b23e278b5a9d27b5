"""App-side helpers of the FPGM dashboard: state, caches, figures, uploads and exports.

Everything computational is done by ``fpgm_core``; this package adapts it to Streamlit.

* ``state``: the session's state, its model and plan; ``cache``: bounded ``st.cache_*`` wrappers.
  These two import Streamlit.
* ``sources`` (what a model is built from), ``pretrained`` (torchvision weights with progress),
  ``uploads`` (reading uploaded files without running them), ``figures`` (plotly figures),
  ``projections`` (PCA/MDS), ``summary`` (plan summary and layer table), ``exports`` (download
  bytes and code): plain functions, no Streamlit, called by the pages, tests and benchmark.
"""
