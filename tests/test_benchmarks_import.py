"""Every benchmark module imports against the current package layout.

The benchmarks are not run by ``make test`` (they take minutes and need the peer libraries), so a
moved module would otherwise surface only at the next ``make bench``. The peers are installed for
benchmarks only: a module whose import fails for want of one of them is skipped, any other
failed import fails the test.
"""

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
PEER_PACKAGES = {"pytorch_grad_cam", "torchcam", "captum", "quantus"}
MODULES = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_module_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] not in PEER_PACKAGES:
            raise
        pytest.skip(f"{name} needs {error.name}, installed for benchmarks only")
    finally:
        for module in [m for m, v in sys.modules.items()
                       if getattr(v, "__file__", None) and str(BENCHMARKS) in str(v.__file__)]:
            del sys.modules[module]
