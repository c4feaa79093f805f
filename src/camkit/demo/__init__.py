"""``camkit demo``: the showcase behind ``make demo``, in three parts and one report.

1. **classic**: the pretrained EfficientNet-Lite0 explains real photos that ship inside
   installed packages (imgaug's quokka, foolbox's ImageNet samples) with every classic method;
2. **mcam**: a small CNN is trained on the synthetic co-occurrence data set, biased so that
   one class almost only appears with another, then the M-CAM memory on its features; Grad-CAM
   and M-CAM explain both classes of the pair on decorrelated test images where the two
   objects appear together and apart, and ``camkit.evaluate`` measures how much of each map
   falls on the object and on its partner;
3. **embedding**: a small triplet network is trained on single-object synthetic images and a
   weight bank fitted on them; a few test queries are explained by weight transfer, next to
   Grad-CAM of the similarity to their nearest bank image, with their nearest neighbours.

Everything goes into ``<out>/report.html`` (one section per part) and PNG grids. Networks,
the memory and the bank are cached under ``<out>/cache/<part>-<key>/``, the key a hash of the
part's settings: a second run with the same settings loads them instead of training. Nothing
is downloaded: the photos and weights come from installed packages, the rest is synthetic.
"""

from camkit.demo.cache import cached
from camkit.demo.classic import classic_methods
from camkit.demo.mcam import pair_cases
from camkit.demo.nets import batch_hard_loss, load_net, save_net, seeded_net
from camkit.demo.run import PARTS, run_parts, summary_table, write_demo_report
from camkit.demo.settings import (
    DEFAULTS,
    QUICK,
    ClassicSettings,
    EmbeddingSettings,
    McamSettings,
    Part,
    PartSettings,
)

__all__ = [
    "DEFAULTS", "PARTS", "QUICK", "ClassicSettings", "EmbeddingSettings", "McamSettings", "Part",
    "PartSettings", "batch_hard_loss", "cached", "classic_methods", "load_net", "pair_cases",
    "run_parts", "save_net", "seeded_net", "summary_table", "write_demo_report",
]
