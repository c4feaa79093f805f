"""``camkit serve``: the interactive explorer in the browser (``pip install camkit[serve]``)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from camkit import api
from camkit.capture.layers import find_layer
from camkit.cli.arguments import add_model_arguments, load_model
from camkit.cli.explain import trained_artifacts, with_memory
from camkit.explorer import serve
from camkit.methods import registry


def add_parser(subparsers: Any) -> None:
    """Add ``serve`` to the ``camkit`` subcommands."""
    p = subparsers.add_parser(
        "serve", help="explore explanations interactively in the browser (offline, localhost)",
        description="Serve a page with an Explain tab (upload an image, click a class, switch "
                    "method, layer, view and opacity, metrics, downloads) and a Browse tab "
                    "(page through a camkit explain-dataset folder sorted by the metrics of "
                    "camkit evaluate).")
    add_model_arguments(p)
    p.add_argument("--memory", default=None, metavar="FILE",
                   help="M-CAM memory for the mcam method (from camkit train-memory)")
    p.add_argument("--bank", default=None, metavar="FILE",
                   help="weight bank for embedding-gradcam (from camkit fit-embedding)")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="a camkit explain-dataset folder to open in the Browse tab")
    p.add_argument("--evaluation", default=None, metavar="PATH",
                   help="camkit evaluate's results.json (or its folder): metrics to sort by")
    p.add_argument("--out", default="runs/serve",
                   help="the only folder the server writes to (uploads, downloads)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default localhost; 0.0.0.0 exposes the page)")
    p.add_argument("--port", type=int, default=None, help="port (default: first free from 7860)")
    p.add_argument("--top-k", type=int, default=5, help="best classes explained per image")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``camkit serve`` until Ctrl-C."""
    given = [m for m in api.available_methods()
             if (flag := registry.needed_artifact(m)) and getattr(args, flag)]
    artifacts = trained_artifacts(args, given, torch.device("cpu"))
    network = load_model(args)
    if args.layer:
        find_layer(network.model, args.layer)  # an unknown layer: the message, before serving
    loaded, layer = with_memory(network, artifacts.get("memory"), args.layer)
    print("camkit serve: starting (Ctrl-C stops it)", flush=True)
    serve(dataclasses.replace(loaded, layer=layer), memory=artifacts.get("memory"),
          bank=artifacts.get("bank"), results=args.results, evaluation=args.evaluation,
          out=args.out, host=args.host, port=args.port, top_k=args.top_k)
    return 0
