"""``camkit evaluate --report``: the HTML report of an evaluation."""

from __future__ import annotations

import argparse
import csv
import re

import numpy as np

from camkit.cli.evaluate import add_parser
from camkit.data import quokka
from camkit.evaluate.report import _picture
from camkit.zoo import load_model


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="camkit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


def test_report_holds_the_table_the_explained_image_and_the_settings(tmp_path, capsys):
    report = tmp_path / "sub" / "evaluation.html"
    rc = run_cli(["evaluate", "--data", "quokka", "--methods", "gradcam,layercam",
                  "--metrics", "energy-box,pointing-box", "--out", str(tmp_path / "o"),
                  "--report", str(report)])
    assert rc == 0 and str(report) in capsys.readouterr().out
    page = report.read_text(encoding="utf-8")
    rows = {(r["method"], r["metric"]): r for r in csv.DictReader(open(tmp_path / "o" /
                                                                       "results.csv"))}
    metrics = page[page.index('id="metrics"'):page.index("</table>", page.index('id="metrics"'))]
    for method in ("gradcam", "layercam"):
        shown = re.search(rf'<th scope="row">{method}</th><td class="num">([0-9.]+)', metrics)
        assert float(shown.group(1)) == float(f"{float(rows[method, 'energy-box']['mean']):.3g}")
    assert "energy-box ↑" in metrics and "explain ms / image" in metrics
    assert page.count('class="item card') == 1 and ">quokka</h2>" in page
    assert page.count("data:image/png;base64,") >= 3  # the photo and one map per method
    assert "<th scope=\"row\">data</th><td>quokka</td>" in page


def test_report_images_are_the_pictures_the_model_saw():
    loaded = load_model()
    photo = quokka().image
    seen = np.asarray(loaded.preprocess.view(photo), dtype=np.int16)
    back = _picture(loaded.preprocess(photo), loaded.preprocess).astype(np.int16)
    assert back.shape == seen.shape and np.abs(back - seen).max() <= 1
