"""The Gradio page: an Explain tab over an :class:`~camkit.explorer.explorer.Explorer` and a
Browse tab over a :class:`~camkit.explorer.browse.Browser`.

Every handler turns a problem (an unreadable image, a wrong weights file, an unknown layer or
folder) into a message in the page. Gradio is imported only when the page is built, after
:func:`offline_environment` has switched off its telemetry and pointed its upload folder into
the output folder.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from camkit.explorer.browse import SCORE, Browser, Row, as_filter, describe, open_browser
from camkit.explorer.explorer import METRICS, VIEWS, Explorer, bundled_samples

ALL_METHODS, ALL_CLASSES = "all methods", "all classes"
PAGE_SIZE = 24
TRACK_PROGRESS = gr.Progress(track_tqdm=True)  # Gradio fills it in for each call
CSS = "#picture img { width: 100%; height: 100%; object-fit: contain; }"  # scale maps up
HINT = "Upload an image or pick a sample."


def offline_environment(out: Path) -> None:
    """No analytics, version checks or Hugging Face calls; uploads go to ``out/uploads``."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["GRADIO_TEMP_DIR"] = str((out / "uploads").resolve())


def problem(err: Exception) -> str:
    """An exception as the page's message (the traceback goes to the server's stderr)."""
    traceback.print_exception(err, file=sys.stderr)
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return f"**Problem:** {text}"


class ExplainHandlers:
    """The Explain tab's event handlers: plain values in, plain values out."""

    def __init__(self, explorer: Explorer) -> None:
        self.explorer = explorer
        self.samples = bundled_samples()

    def layer(self, layer: str | None) -> str:
        return layer or self.explorer.loaded.layer

    def open_file(self, path: str | None, method: str, layer: str | None, view: str,
                  alpha: float) -> tuple[Any, ...]:
        """A new upload: ``(key, class choices, picture, message)``."""
        if not path:
            return None, [], None, HINT
        try:
            key = self.explorer.add_file(path)
        except (ValueError, FileNotFoundError) as err:
            return None, [], None, problem(err)
        return self.first_view(key, method, layer, view, alpha)

    def open_sample(self, name: str | None, method: str, layer: str | None, view: str,
                    alpha: float) -> tuple[Any, ...]:
        """A bundled sample: ``(key, class choices, picture, message)``."""
        if name not in self.samples:
            return None, [], None, HINT
        key = self.explorer.add_image(self.samples[name](), name)
        return self.first_view(key, method, layer, view, alpha)

    def first_view(self, key: str, method: str, layer: str | None, view: str,
                   alpha: float) -> tuple[Any, ...]:
        picture, message = self.show(key, 0, method, layer, view, alpha)
        if picture is None:
            return key, [], None, message
        classes = self.explorer.classes(key, self.layer(layer))
        return key, [(c.label, k) for k, c in enumerate(classes)], picture, message

    def show(self, key: str | None, k: int | None, method: str, layer: str | None, view: str,
             alpha: float, progress: Callable[..., Any] | None = None) -> tuple[Any, str]:
        """The picture of one map: ``(picture or None, message)``."""
        if key is None:
            return None, HINT
        k, layer = k or 0, self.layer(layer)
        try:
            todo = self.explorer.missing(key, layer, method)
            if todo and progress is not None:
                progress(0, desc=f"computing {', '.join(todo)} at {layer}")
            picture = self.explorer.picture(key, layer, method, k, view, alpha)
        except Exception as err:  # noqa: BLE001 - every problem becomes a message
            return None, problem(err)
        name = self.explorer.classes(key, layer)[k].name
        flat = self.explorer.is_constant(key, layer, method, k)
        note = " The map is constant (shown as zeros)." if flat else ""
        return picture, f"{method} at `{layer}` for **{name}**.{note}"

    def measure(self, key: str | None, k: int | None, method: str, layer: str | None) -> str:
        """The metrics of the shown map, as a Markdown table."""
        if key is None:
            return HINT
        try:
            rows = self.explorer.measure(key, self.layer(layer), k or 0, [method])
        except Exception as err:  # noqa: BLE001
            return problem(err)
        head = ["method", *(f"{m} {'↑' if up else '↓'}" for m, (_, up) in METRICS.items())]
        lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(METRICS) + "|"]
        lines += ["| " + " | ".join([r["method"], *(f"{r[m]:.3g}" for m in METRICS)]) + " |"
                  for r in rows]
        return "\n".join(lines)

    def download(self, key: str | None, layer: str | None) -> tuple[list[str] | None, str]:
        """Write the image's maps and report: ``(files, message)``."""
        if key is None:
            return None, HINT
        try:
            saved = self.explorer.export(key, self.layer(layer))
        except Exception as err:  # noqa: BLE001
            return None, problem(err)
        return [str(saved.maps), str(saved.report)], f"Saved to `{saved.report.parent}`."

    def load_model(self, arch: str, weights: str | None) -> tuple[str, list[str], list[str]]:
        """Switch model: ``(message, methods, layers)``."""
        try:
            self.explorer.reload(arch.strip(), weights or None)
        except Exception as err:  # noqa: BLE001
            return problem(err), self.explorer.methods, self.explorer.layers
        return (f"Loaded {self.explorer.loaded.arch}.", self.explorer.methods,
                self.explorer.layers)


class BrowseHandlers:
    """The Browse tab's event handlers over the one open :class:`Browser`."""

    def __init__(self, explorer: Explorer, browser: Browser | None = None) -> None:
        self.explorer, self.browser = explorer, browser

    def open(self, results: str, evaluation: str | None) -> str:
        """Open a results folder (and an evaluation): the message."""
        try:
            self.browser = open_browser(results.strip(), (evaluation or "").strip() or None,
                                        self.explorer.loaded)
        except Exception as err:  # noqa: BLE001
            return problem(err)
        return f"Opened `{results}`: {len(self.browser.rows)} maps."

    def choices(self) -> tuple[list[str], list[str], list[str]]:
        """The sort keys, methods and classes to offer."""
        if self.browser is None:
            return [SCORE], [ALL_METHODS], [ALL_CLASSES]
        return (self.browser.sort_keys, [ALL_METHODS, *self.browser.results.methods],
                [ALL_CLASSES, *self.browser.class_names])

    def page(self, sort: str, worst: bool, method: str, class_name: str, constant: bool,
             number: float | None = 0, shift: int = 0) -> tuple[Any, str, list[Row], int]:
        """Page ``number + shift``: ``(gallery items, message, its rows, page number)``."""
        if self.browser is None:
            return [], "Open a `camkit explain-dataset` folder.", [], 0
        try:
            page = self.browser.query(sort, worst=worst, method=as_filter(method, ALL_METHODS),
                                      class_name=as_filter(class_name, ALL_CLASSES),
                                      constant_only=constant, page=int(number or 0) + shift,
                                      page_size=PAGE_SIZE)
            pictures = self.browser.pictures(page.rows)
        except Exception as err:  # noqa: BLE001
            return [], problem(err), [], 0
        gallery = [(p, r.caption) for p, r in zip(pictures, page.rows, strict=True)]
        return gallery, describe(page), page.rows, page.number

    def compare(self, rows: list[Row], index: int | None) -> tuple[Any, str]:
        """Every method's map of the chosen image and class: ``(gallery items, message)``."""
        if self.browser is None or index is None or not 0 <= index < len(rows):
            return [], ""
        row = rows[index]
        return (self.browser.side_by_side(row),
                f"{row.id}, {row.class_name}: every method side by side")


def build_app(explorer: Explorer, browser: Browser | None = None) -> gr.Blocks:
    """The page (not started): :func:`launch` serves it."""
    offline_environment(explorer.out)
    with gr.Blocks(title="camkit serve", analytics_enabled=False) as app:
        gr.Markdown(f"## camkit · {explorer.loaded.arch}")
        with gr.Tab("Explain", id="explain"):
            _explain_tab(ExplainHandlers(explorer))
        with gr.Tab("Browse", id="browse"):
            _browse_tab(BrowseHandlers(explorer, browser))
    return app


def _explain_tab(h: ExplainHandlers) -> None:
    key = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Image", file_types=["image"], type="filepath",
                             elem_id="upload")
            sample = gr.Dropdown(list(h.samples), value=None, label="or a sample",
                                 elem_id="sample")
            method = gr.Dropdown(h.explorer.methods, value="gradcam", label="Method",
                                 elem_id="method")
            layer = gr.Dropdown(h.explorer.layers, value=h.explorer.loaded.layer, label="Layer",
                                allow_custom_value=True, elem_id="layer")
            view = gr.Radio(list(VIEWS), value="overlay", label="View", elem_id="view")
            alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity", elem_id="alpha")
            with gr.Accordion("Model", open=False):
                arch = gr.Textbox(h.explorer.loaded.arch, label="Architecture")
                weights = gr.File(label="Weights (state dict)", type="filepath")
                load = gr.Button("Load model")
        with gr.Column(scale=2):
            message = gr.Markdown(HINT, elem_id="message")
            picture = gr.Image(label="Map", type="numpy", interactive=False, elem_id="picture",
                               format="png", height=448, buttons=["download", "fullscreen"])
            classes = gr.Radio([], label="Top classes (click one to explain it)",
                               elem_id="classes")
            with gr.Row():
                measure = gr.Button("Metrics", elem_id="measure")
                download = gr.Button("Download maps and report", elem_id="download")
            table = gr.Markdown(elem_id="metrics")
            files = gr.File(label="Downloads", file_count="multiple", interactive=False)

    def show(key_: str | None, k: int | None, method_: str, layer_: str | None, view_: str,
             alpha_: float, progress: gr.Progress = TRACK_PROGRESS) -> tuple[Any, str]:
        return h.show(key_, k, method_, layer_, view_, alpha_, progress)

    def opened(result: tuple[Any, ...]) -> tuple[Any, ...]:
        key_, choices, picture_, message_ = result
        return key_, gr.update(choices=choices, value=0 if choices else None), picture_, \
            message_

    look = [method, layer, view, alpha]
    upload.upload(lambda *a: opened(h.open_file(*a)), [upload, *look],
                  [key, classes, picture, message])
    sample.input(lambda *a: opened(h.open_sample(*a)), [sample, *look],
                 [key, classes, picture, message])
    inputs, outputs = [key, classes, *look], [picture, message]
    for control in (method, layer):  # may compute maps: queued, with progress
        control.input(show, inputs, outputs)
    for fast in (classes.input, view.input, alpha.release):  # cached maps: answered at once
        fast(h.show, inputs, outputs, queue=False, show_progress="hidden")
    measure.click(h.measure, [key, classes, method, layer], table)
    download.click(h.download, [key, layer], [files, message])

    def load_model(arch_: str, weights_: str | None) -> tuple[Any, ...]:
        text, methods, layers = h.load_model(arch_, weights_)
        return (text, gr.update(choices=methods), gr.update(choices=layers, value=layers[0]),
                None, gr.update(choices=[], value=None), None)

    load.click(load_model, [arch, weights], [message, method, layer, key, classes, picture])


def _browse_tab(h: BrowseHandlers) -> None:
    sorts, methods, class_names = h.choices()
    first_page, first_info, first_rows, _ = h.page(sorts[0], True, ALL_METHODS, ALL_CLASSES,
                                                   False, 0)
    rows = gr.State(first_rows)
    with gr.Row():
        results = gr.Textbox(str(h.browser.results.root) if h.browser else "",
                             label="explain-dataset folder", elem_id="results", scale=3)
        evaluation = gr.Textbox(str(h.browser.evaluation.path) if h.browser and
                                h.browser.evaluation else "",
                                label="evaluate results (optional)", scale=3)
        open_ = gr.Button("Open", elem_id="open", scale=1)
    with gr.Row():
        sort = gr.Dropdown(sorts, value=sorts[0], label="Sort by", elem_id="sort")
        worst = gr.Checkbox(True, label="worst first", elem_id="worst")
        method = gr.Dropdown(methods, value=ALL_METHODS, label="Method")
        class_name = gr.Dropdown(class_names, value=ALL_CLASSES, label="Class")
        constant = gr.Checkbox(False, label="constant maps only", elem_id="constant")
    with gr.Row():
        previous = gr.Button("◀ previous", elem_id="previous")
        number = gr.Number(0, precision=0, label="page (from 0)", elem_id="page")
        following = gr.Button("next ▶", elem_id="next")
    info = gr.Markdown(first_info, elem_id="browse-info")
    gallery = gr.Gallery(first_page, label="Maps", columns=6, height="auto", elem_id="gallery",
                         format="png", allow_preview=False)
    side_info = gr.Markdown()
    side = gr.Gallery(label="Methods side by side", columns=6, height="auto",
                      elem_id="side", format="png", allow_preview=False)

    query = [sort, worst, method, class_name, constant, number]
    shown = [gallery, info, rows, number]

    def reopened(results_: str, evaluation_: str) -> tuple[Any, ...]:
        text = h.open(results_, evaluation_)
        sorts_, methods_, classes_ = h.choices()
        first = h.page(sorts_[0], True, ALL_METHODS, ALL_CLASSES, False, 0)
        return (gr.update(choices=sorts_, value=sorts_[0]), gr.update(choices=methods_,
                value=ALL_METHODS), gr.update(choices=classes_, value=ALL_CLASSES),
                first[0], f"{text} {first[1]}", first[2], 0)

    open_.click(reopened, [results, evaluation],
                [sort, method, class_name, gallery, info, rows, number])
    for control in (sort, worst, method, class_name, constant):
        control.input(h.page, query[:-1], shown)  # back to the first page
    number.submit(h.page, query, shown)
    previous.click(partial(h.page, shift=-1), query, shown)
    following.click(partial(h.page, shift=1), query, shown)

    def compare(rows_: list[Row], event: gr.SelectData) -> tuple[Any, str]:
        return h.compare(rows_, event.index)

    gallery.select(compare, [rows], [side, side_info])


def launch(app: gr.Blocks, out: Path, host: str = "127.0.0.1", port: int | None = None,
           block: bool = True) -> str:
    """Serve ``app`` on ``host`` (localhost unless told otherwise); returns its address.
    Files are served only from ``out``; ``block=False`` returns at once."""
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                           allowed_paths=[str(out.resolve())], ssr_mode=False,
                           mcp_server=False, quiet=True, footer_links=[], share=False,
                           css=CSS)
    return str(url)
