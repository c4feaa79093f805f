"""``camkit explain --layer a,b``: several layers fused, from the command line."""

from __future__ import annotations

import numpy as np

from camkit.cli import main
from camkit.data import quokka


def test_several_layers_give_one_fused_map(tmp_path, capsys):
    photo = tmp_path / "quokka.jpg"
    quokka().image.save(photo)
    out = tmp_path / "out"
    rc = main(["explain", str(photo), "--arch", "resnet18", "--random-init",
               "--layer", "layer3,layer4", "--fusion", "layercam", "--methods", "layercam",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    maps = np.load(out / "quokka" / "maps.npz")
    assert maps["layercam"].shape == (1, 224, 224)
    assert maps["raw_layercam"].shape == (1, 224, 224)  # the fusion, at the input's size
    assert maps["layercam"].min() == 0 and maps["layercam"].max() > 0.999
