"""``camkit evaluate --sanity``: the checks per method, their verdicts, files and report."""

from __future__ import annotations

import argparse
import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.cli.evaluate import add_parser
from camkit.evaluate.sanity import sanity_check, shown_maps
from camkit.metrics import model_explainer, parameter_randomisation, passes
from tests.models import labelled_case


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="camkit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


@pytest.fixture
def setup():
    return labelled_case(5, 16)


def test_sanity_check_collects_curves_and_verdicts(setup):
    model, data = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = sanity_check(model, data, ["gradcam", "guided-backprop"], "features.2", images=5,
                         batch_size=2, targets="label", seed=1, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(found.methods) == {"gradcam", "guided-backprop"} and found.targets == [0]
    x = torch.stack([d["image"] for d in data])
    targets = torch.tensor([[d["label"]] for d in data])
    for method, m in found.methods.items():
        assert m.steps == ["original", "fc", "features.2", "features.0"]
        assert m.curves["cascading"]["spearman-abs"].shape == (5, 4)
        assert m.curves["independent"]["ssim"].shape == (5, 4)
        assert m.strip.shape == (4, 16, 16) and m.strip.min() >= 0 and m.strip.max() <= 1
        explainer = model_explainer(method, "features.2", seed=1)
        curves = parameter_randomisation(model, x, targets, explainer, seed=1)
        assert np.allclose(m.curves["cascading"]["spearman-abs"],
                           curves.similarity["spearman-abs"][:, 0].numpy(), atol=1e-5)
        assert (m.passed, m.median) == pytest.approx(passes(curves))
        assert method in found.to_markdown() and found.verdict(method).split(":")[0] in (
            "passes", "fails")
    assert json.loads(found.to_json())["verdict_step"] == 2


def test_shown_maps_apply_the_method_relu_then_minmax():
    raw = torch.tensor([[-2.0, 0.0], [1.0, 3.0]])
    assert shown_maps(raw, relu=True).flatten().tolist() == pytest.approx([0.0, 0.0, 1 / 3, 1.0])
    assert shown_maps(raw, relu=False).flatten().tolist() == pytest.approx([0.0, 0.4, 0.6, 1.0])
    assert shown_maps(torch.full((2, 2), 5.0), relu=True).abs().max() == 0


def test_cli_writes_verdicts_and_a_report_with_strips(tmp_path, capsys):
    out = tmp_path / "run"
    rc = run_cli(["evaluate", "--data", "quokka", "--arch", "mobilenet_v3_small", "--random-init",
                  "--methods", "gradcam,guided-backprop", "--metrics", "none", "--sanity",
                  "--sanity-images", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Sanity checks" in printed and "**gradcam**" in printed
    sanity = json.loads((out / "sanity.json").read_text())
    assert set(sanity["methods"]) == {"gradcam", "guided-backprop"}
    steps = sanity["methods"]["gradcam"]["steps"]
    assert steps == ["original", "classifier", *(f"features.{i}" for i in range(12, -1, -1))]
    page = (out / "report.html").read_text(encoding="utf-8")
    part = page[page.index('id="part-2"'):page.index('id="settings"')]
    for method in ("gradcam", "guided-backprop"):
        verdict = "passes" if sanity["methods"][method]["passed"] else "fails"
        assert f"{method} ({verdict}): cascading randomisation" in part
        assert f"{method} {verdict}:" in part  # the sentence with its number
    assert part.count('class="panel"') == 2 * len(steps)  # a strip per method
    for i, step in enumerate(steps):
        assert f'data-method="{i}. {step}"' in part
    charts = re.findall(r'<div class="figures">.*?</div>', part, re.DOTALL)
    pictures = re.findall(r'src="data:image/png;base64,([^"]+)"', charts[0])
    assert len(pictures) == 2
    chart = Image.open(io.BytesIO(base64.b64decode(pictures[0])))
    assert chart.size == (360, 220)
    assert "median ρ |map| at step 7" in part  # the table, read where the verdict reads
