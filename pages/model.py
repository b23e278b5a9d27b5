"""Model page: choose the bundled demo, a torchvision or timm architecture, your own code or an uploaded file; see its summary."""

from pathlib import Path

import streamlit as st

from dashboard import cache
from dashboard.pretrained import download_pretrained, download_timm_pretrained, pretrained_available, timm_pretrained_available
from dashboard.sources import DEFAULT_SOURCE, FACTORIES_ENV, ModelSource, configured_factories
from dashboard.state import active_model, commit_model, require_entry, workspace
from dashboard.summary import format_count
from dashboard.uploads import FORMAT_LABELS, UPLOAD_TYPES, check_fits, digest_of, is_onnx_upload, read_upload
from fpgm_core import FpgmError, ModelLoadError, available_devices, classification_architectures, count_parameters
from fpgm_core.models import parse_input_shape
from fpgm_core.onnx_graph import external_data_files, inline_external_data

SOURCE_KINDS = {"demo": "Bundled demo", "torchvision": "torchvision", "timm": "timm", "factory": "Your code",
                "upload": "Upload a file"}
WEIGHT_CHOICES = {"default": "pretrained (when cached or downloadable)", "none": "random init"}


@st.cache_data(show_spinner="Listing timm's architectures…")
def _timm_architectures() -> list[str]:
    from fpgm_core.models.timm import timm_architectures

    return timm_architectures()


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


def _factories() -> tuple[str, ...]:
    try:
        return configured_factories()
    except ModelLoadError as exc:
        st.error(f"The server's model factories are misconfigured: {exc}")
        return ()


def _choose() -> None:
    st.subheader("Choose a model")
    factories = _factories()
    kinds = [kind for kind in SOURCE_KINDS if kind != "factory" or factories]
    if st.session_state.get("source_kind") not in kinds:
        st.session_state.source_kind = kinds[0]
    kind = st.radio("Source", kinds, format_func=SOURCE_KINDS.get, horizontal=True,
                    key="source_kind", persist_state="session")
    if kind == "demo":
        st.caption("A small residual CNN trained on scikit-learn's 8×8 handwritten digits; its weights ship with fpgm_core.")
        if st.button("Load the demo model", type="primary"):
            _commit(DEFAULT_SOURCE, flash="Loaded the bundled demo model.")
    elif kind == "torchvision":
        arch = st.selectbox("Architecture", classification_architectures(), key="tv_arch", persist_state="session")
        _choose_pretrained("torchvision", arch, pretrained_available, download_pretrained, "torch hub")
    elif kind == "timm":
        names = _timm_architectures()
        arch = st.selectbox(f"timm architecture ({len(names):,}; type to search)", names, key="timm_arch",
                            persist_state="session")
        _choose_pretrained("timm", f"timm:{arch}", timm_pretrained_available, download_timm_pretrained, "Hugging Face")
    elif kind == "factory":
        _choose_factory(factories)
    else:
        _choose_upload(factories)
    st.selectbox("Device", available_devices(), key="device", persist_state="session",
                 help="Where weights live and distances are computed.")


def _choose_pretrained(kind: str, arch: str, available, download, cache_name: str) -> None:
    """Weights radio, cache status and the Load button (with a download progress bar) for torchvision/timm."""
    weights = st.radio("Weights", list(WEIGHT_CHOICES), format_func=WEIGHT_CHOICES.get, horizontal=True,
                       key=f"{'tv' if kind == 'torchvision' else kind}_weights", persist_state="session")
    cached = weights == "default" and available(arch)
    if weights == "default":
        st.caption(f"In the local {cache_name} cache." if cached else "Not cached yet: they will be downloaded.")
    if not st.button(f"Load {arch}", type="primary"):
        return
    if weights == "default" and not cached:
        bar = st.progress(0.0, text=f"Downloading {arch} weights…")

        def report(done: int, total: int | None) -> None:
            fraction = min(done / total, 1.0) if total else 0.0
            bar.progress(fraction, text=f"Downloading {arch} weights… {format_count(done, 'B')}")

        try:
            download(arch, report)
        except ModelLoadError as exc:
            bar.empty()
            notice = f"{exc}. Using a random initialisation (seeded, reproducible) instead."
            _commit(ModelSource(kind, arch, "none"), notice=notice, flash=f"Loaded {arch} with random weights.")
            return
        bar.empty()
    _commit(ModelSource(kind, arch, weights), flash=f"Loaded {arch} ({WEIGHT_CHOICES[weights].split(' ')[0]}).")


def _input_shape_field(key: str) -> tuple[int, ...] | None:
    """The input shape typed for your own model (() for the model's own), or None after showing an error."""
    text = st.text_input("Input shape (optional)", key=key, placeholder="the model's own, e.g. 1,3,224,224",
                         help="Batch first. Leave empty when the model declares one (an input_shape attribute).")
    if not text.strip():
        return ()
    try:
        return parse_input_shape(text)
    except ModelLoadError as exc:
        st.error(str(exc))
        return None


def _choose_factory(factories: tuple[str, ...]) -> None:
    spec = st.selectbox("Model factory", factories, key="factory_spec", persist_state="session")
    st.caption("Callables named by whoever started this server (`--factory` or `FPGM_MODEL_FACTORIES`); each returns an "
               "`nn.Module` and runs here, trusted. Nothing uploaded ever runs as code.")
    shape = _input_shape_field("factory_shape")
    if st.button(f"Load {spec}", type="primary", disabled=shape is None):
        _commit(ModelSource("factory", spec, "default", input_shape=shape), flash=f"Loaded {spec}.")


def _upload_architectures(factories: tuple[str, ...]) -> list[str]:
    return ["demo", *classification_architectures(), *factories, *(f"timm:{name}" for name in _timm_architectures())]


def _choose_upload(factories: tuple[str, ...]) -> None:
    uploaded = st.file_uploader(
        "Model file", type=UPLOAD_TYPES, key="upload_file",
        help="A state_dict (.pt, .pth, .safetensors), a TorchScript module (.pt), a torch.export program (.pt2) "
             "or an ONNX model (.onnx).",
    )
    if uploaded is not None and is_onnx_upload(uploaded.name):
        _choose_onnx(uploaded)
        return
    arch = st.selectbox("Architecture of these weights", _upload_architectures(factories), key="upload_arch",
                        persist_state="session", help="torchvision, your own factories, then timm:NAME (type to search).")
    shape = _input_shape_field("upload_shape") if arch in factories else ()
    st.caption(
        "Pickles are read with `weights_only=True`: tensors only, never code. A pickled whole `nn.Module` is "
        "refused; upload `model.state_dict()` instead. TorchScript and `.pt2` files are read for their weights "
        "only, without running them, and the weights are loaded into the architecture chosen here. An `.onnx` "
        "file brings its own graph."
    )
    if not st.button("Load the uploaded weights", type="primary", disabled=uploaded is None or shape is None):
        return
    data = uploaded.getvalue()
    try:
        weights = read_upload(data, uploaded.name)
        check_fits(weights.state, arch, shape)
    except FpgmError as exc:
        st.error(str(exc))
        return
    source = ModelSource("upload", arch, uploaded.name, digest_of(data), weights.format, shape)
    _commit(source, state=weights.state, flash=f"Loaded {uploaded.name} ({FORMAT_LABELS[weights.format]}) into {arch}.")


def _choose_onnx(uploaded) -> None:
    st.caption(
        "An ONNX model carries its graph and weights: no architecture to choose. It is read as a protobuf (no code "
        "runs), converted to PyTorch with onnx2torch where it can be (checked against onnxruntime), and otherwise "
        "pruned from its Conv/Gemm initializers directly."
    )
    data = uploaded.getvalue()
    needed = external_data_files(data)
    files: dict[str, bytes] = {}
    if any(name == Path(name).name for name in needed):  # (a path is refused on Load, never asked for)
        # torch's dynamo exporter writes model.onnx + model.onnx.data: both come through the browser.
        extra = st.file_uploader(f"Its external data ({', '.join(needed)})", accept_multiple_files=True, key="onnx_data_files",
                                 help="The graph keeps its weights in these files; they are read from the upload only.")
        files = {item.name: item.getvalue() for item in extra or []}
        missing = [name for name in needed if name not in files]
        if missing:
            st.caption(f"Still needed: {', '.join(missing)}.")
    shape = _input_shape_field("onnx_shape")
    ready = shape is not None and all(name in files for name in needed if name == Path(name).name)
    if not st.button("Load the ONNX model", type="primary", disabled=not ready):
        return
    try:
        if needed:
            data = inline_external_data(data, files, uploaded.name)
    except FpgmError as exc:
        st.error(str(exc))
        return
    source = ModelSource("onnx", uploaded.name, "default", digest_of(data), "onnx", shape)
    _commit(source, state=data, flash=f"Loaded {uploaded.name} (ONNX graph).")


def _commit(source: ModelSource, state=None, notice: str | None = None, flash: str | None = None) -> None:
    """Load ``source`` now (so errors show here), then make it the session's model."""
    try:
        cache.load_model(source, st.session_state.device, state)
    except FpgmError as exc:
        st.error(str(exc))
        return
    commit_model(source, state, notice, flash)
    st.rerun()


def _onnx_status(onnx) -> None:
    """Whether the graph converted (what works) and whether its BatchNorm looks folded."""
    if onnx.converted:
        st.info(f"ONNX graph {onnx.status()}.", icon=":material/check_circle:")
    else:
        st.warning(f"ONNX graph {onnx.status()}.", icon=":material/info:")
    if onnx.analysis.folded is not None:
        st.warning(onnx.analysis.folded.message() + ".", icon=":material/warning:")


def _summary() -> None:
    active = active_model()
    loaded = active.loaded
    st.subheader(active.source.label())
    for notice in (workspace().notice, loaded.notice):
        if notice:
            st.warning(notice, icon=":material/info:")
    if loaded.onnx is not None:
        _onnx_status(loaded.onnx)
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
               "multiply-add as 2 · output layers (the classifier) are left out of plans unless included.")
    rows = [
        {
            "layer": layer.name, "type": layer.type, "weight shape": " × ".join(map(str, layer.weight_shape)),
            "filters": layer.filters, "groups": layer.groups, "output layer": layer.is_output,
        }
        for layer in active.layers
    ]
    st.dataframe(rows, hide_index=True, width="stretch", height=min(38 + 35 * len(rows), 520))
    if st.session_state.source_kind == "factory" or not _factories():
        st.caption(f"Your own models: start the server with `streamlit run app.py -- --factory package.module:callable` "
                   f"(or set `{FACTORIES_ENV}`); they then appear under *Your code*.")


require_entry(__file__)
page()
