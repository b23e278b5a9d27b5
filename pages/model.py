"""Model page: choose the bundled demo, a torchvision architecture or an uploaded file; see its summary."""

import streamlit as st

from dashboard import cache
from dashboard.pretrained import download_pretrained, pretrained_available
from dashboard.sources import DEFAULT_SOURCE, ModelSource
from dashboard.state import active_model, commit_model, require_entry, workspace
from dashboard.summary import format_count
from dashboard.uploads import FORMAT_LABELS, UPLOAD_TYPES, check_fits, digest_of, read_upload
from fpgm_core import FpgmError, ModelLoadError, available_devices, classification_architectures, count_parameters

SOURCE_KINDS = {"demo": "Bundled demo", "torchvision": "torchvision architecture", "upload": "Upload a file"}
WEIGHT_CHOICES = {"default": "pretrained (when cached or downloadable)", "none": "random init"}


def page() -> None:
    st.title("Model")
    flash = st.session_state.flash
    if flash:
        st.success(flash)
        st.session_state.flash = None
    choose, summary = st.columns([2, 3], gap="large")
    with choose:
        _choose()
    with summary:
        _summary()


def _choose() -> None:
    st.subheader("Choose a model")
    kind = st.radio("Source", list(SOURCE_KINDS), format_func=SOURCE_KINDS.get, horizontal=True,
                    key="source_kind", persist_state="session")
    if kind == "demo":
        st.caption("A small residual CNN trained on scikit-learn's 8×8 handwritten digits; its weights ship with fpgm_core.")
        if st.button("Load the demo model", type="primary"):
            _commit(DEFAULT_SOURCE, flash="Loaded the bundled demo model.")
    elif kind == "torchvision":
        _choose_torchvision()
    else:
        _choose_upload()
    st.selectbox("Device", available_devices(), key="device", persist_state="session",
                 help="Where weights live and distances are computed.")


def _choose_torchvision() -> None:
    arch = st.selectbox("Architecture", classification_architectures(), key="tv_arch", persist_state="session")
    weights = st.radio("Weights", list(WEIGHT_CHOICES), format_func=WEIGHT_CHOICES.get, horizontal=True,
                       key="tv_weights", persist_state="session")
    cached = weights == "default" and pretrained_available(arch)
    if weights == "default":
        st.caption("In the local torch hub cache." if cached else "Not cached yet: they will be downloaded.")
    if not st.button(f"Load {arch}", type="primary"):
        return
    if weights == "default" and not cached:
        bar = st.progress(0.0, text=f"Downloading {arch} weights…")

        def report(done: int, total: int | None) -> None:
            fraction = min(done / total, 1.0) if total else 0.0
            bar.progress(fraction, text=f"Downloading {arch} weights… {format_count(done, 'B')}")

        try:
            download_pretrained(arch, report)
        except ModelLoadError as exc:
            bar.empty()
            notice = f"{exc}. Using a random initialisation (seeded, reproducible) instead."
            _commit(ModelSource("torchvision", arch, "none"), notice=notice, flash=f"Loaded {arch} with random weights.")
            return
        bar.empty()
    _commit(ModelSource("torchvision", arch, weights), flash=f"Loaded {arch} ({WEIGHT_CHOICES[weights].split(' ')[0]}).")


def _choose_upload() -> None:
    uploaded = st.file_uploader(
        "Model file", type=UPLOAD_TYPES, key="upload_file",
        help="A state_dict (.pt, .pth, .safetensors), a TorchScript module (.pt) or a torch.export program (.pt2).",
    )
    archs = ["demo", *classification_architectures()]
    arch = st.selectbox("Architecture of these weights", archs, key="upload_arch", persist_state="session")
    st.caption(
        "Pickles are read with `weights_only=True`: tensors only, never code. A pickled whole `nn.Module` is "
        "refused; upload `model.state_dict()` instead. TorchScript and `.pt2` files are read for their weights "
        "only, without running them, and the weights are loaded into the architecture chosen here."
    )
    if not st.button("Load the uploaded weights", type="primary", disabled=uploaded is None):
        return
    data = uploaded.getvalue()
    try:
        weights = read_upload(data, uploaded.name)
        check_fits(weights.state, arch)
    except FpgmError as exc:
        st.error(str(exc))
        return
    source = ModelSource("upload", arch, uploaded.name, digest_of(data), weights.format)
    _commit(source, state=weights.state, flash=f"Loaded {uploaded.name} ({FORMAT_LABELS[weights.format]}) into {arch}.")


def _commit(source: ModelSource, state=None, notice: str | None = None, flash: str | None = None) -> None:
    """Load ``source`` now (so errors show here), then make it the session's model."""
    try:
        cache.load_model(source, st.session_state.device, state)
    except FpgmError as exc:
        st.error(str(exc))
        return
    commit_model(source, state, notice, flash)
    st.rerun()


def _summary() -> None:
    active = active_model()
    loaded = active.loaded
    st.subheader(active.source.label())
    for notice in (workspace().notice, loaded.notice):
        if notice:
            st.warning(notice, icon=":material/info:")
    flops, _ = cache.model_flops(active.model, active.key, loaded.input_shape)
    filters = sum(layer.filters for layer in active.layers)
    columns = st.columns(4)
    columns[0].metric("Parameters", format_count(count_parameters(active.model)))
    columns[1].metric("FLOPs / forward", format_count(flops),
                      help=f"torch.utils.flop_counter on an input of {loaded.input_shape}")
    columns[2].metric("Prunable layers", f"{len(active.layers)}")
    # The input shape is a caption, not a metric: "3×224×224" is wider than a metric column.
    columns[3].metric("Filters", f"{filters:,}", help="Output channels (or features) of all prunable layers together.")
    st.caption(f"Input `{'×'.join(str(d) for d in loaded.input_shape)}` · device `{active.device}` · FLOPs count a "
               "multiply-add as 2 · the last layer is the classifier, left out of plans unless included.")
    rows = [
        {
            "layer": layer.name, "type": layer.type, "weight shape": " × ".join(map(str, layer.weight_shape)),
            "filters": layer.filters, "groups": layer.groups, "output layer": layer.is_output,
        }
        for layer in active.layers
    ]
    st.dataframe(rows, hide_index=True, width="stretch", height=min(38 + 35 * len(rows), 520))


require_entry(__file__)
page()
