"""Where the report lives: above the library, loaded only when asked for."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import camkit
from camkit.viz import report
from tests.models import TinyCNN


def test_import_camkit_loads_no_report() -> None:
    probe = "import sys, camkit; print('camkit.viz.report' in sys.modules, 'jinja2' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == ["False", "False"]


def test_camkit_exports_the_report_functions_lazily() -> None:
    assert camkit.report is report
    assert camkit.explanation_to_html is report.explanation_to_html
    assert camkit.save_explanation is report.save_explanation
    assert not hasattr(camkit.Explanation, "to_html") and not hasattr(camkit.Explanation, "save")
    with pytest.raises(AttributeError, match="no attribute 'reports'"):
        _ = camkit.reports  # type: ignore[attr-defined]  # the typo is the point


def test_save_explanation_from_the_top_level(tmp_path) -> None:
    torch.manual_seed(0)
    expl = camkit.explain(TinyCNN().eval(), torch.randn(1, 3, 8, 8), 1, ("gradcam",))
    saved = camkit.save_explanation(expl, tmp_path, [np.zeros((8, 8, 3), np.uint8)])
    assert saved.report.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in saved.grids] == ["image_1.png"]
