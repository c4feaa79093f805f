"""``camkit serve``: explore a model's explanations in the browser, offline, on localhost.

The Explain tab explains an uploaded or bundled image for its top-k classes and switches
class, method, layer, view and opacity from cached maps; the Browse tab pages through the
maps of a ``camkit explain-dataset`` folder, sorted and filtered by the metrics of a
``camkit evaluate`` run. :class:`Explorer` and :class:`Browser` hold the logic without any
web framework; :mod:`camkit.explorer.app` is the Gradio page (``pip install camkit[serve]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from camkit import zoo
from camkit.data.images import PathLike
from camkit.embedding import WeightBank
from camkit.explorer.browse import Browser, open_browser
from camkit.explorer.explorer import Explorer
from camkit.memory import BiasReducingMemory

__all__ = ["Browser", "Explorer", "serve"]


def serve(
    model: str | zoo.LoadedModel = "efficientnet-lite0",
    *,
    weights: PathLike | None = None,
    random_init: bool = False,
    memory: BiasReducingMemory | PathLike | None = None,
    bank: WeightBank | PathLike | None = None,
    results: PathLike | None = None,
    evaluation: PathLike | None = None,
    out: PathLike = "runs/serve",
    host: str = "127.0.0.1",
    port: int | None = None,
    top_k: int = 5,
    block: bool = True,
) -> str:
    """Serve the explorer page and return its address (with ``block=True``, the default,
    only once the server stops: Ctrl-C).

    Args:
        model: an architecture name for :func:`camkit.zoo.load_model` (with ``weights`` or
            ``random_init``), or a loaded model.
        memory, bank: M-CAM's memory and embedding Grad-CAM's weight bank (objects or the
            files ``camkit train-memory`` / ``camkit fit-embedding`` wrote).
        results: a ``camkit explain-dataset`` folder to open in the Browse tab, and
            ``evaluation`` the ``camkit evaluate`` output whose metrics sort it.
        out: the only folder the server writes to (uploads, downloads).
        host: the address to bind; localhost unless told otherwise.
        port: the port (default: the first free one from 7860).
        top_k: the number of best classes explained per image.
    """
    loaded = model if isinstance(model, zoo.LoadedModel) else zoo.load_model(
        model, weights, random_init=random_init)
    artifacts: dict[str, Any] = {}
    if memory is not None:
        artifacts["memory"] = (memory if isinstance(memory, BiasReducingMemory)
                               else BiasReducingMemory.load(os.fspath(memory)))
    if bank is not None:
        artifacts["bank"] = bank if isinstance(bank, WeightBank) else WeightBank.load(
            os.fspath(bank))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    explorer = Explorer(loaded, folder, artifacts=artifacts, top_k=top_k)
    browser = None if results is None else open_browser(results, evaluation, loaded)
    try:
        from camkit.explorer.app import build_app, launch
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"camkit serve needs Gradio ({err}): pip install "
                                  "'camkit[serve]'", name=err.name) from err
    return launch(build_app(explorer, browser), folder, host, port, block)
