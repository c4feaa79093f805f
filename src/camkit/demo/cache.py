"""Trained parts cached by a hash of their settings, so a second run reuses them."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from camkit.demo.settings import CACHE_VERSION, PartSettings


def cache_key(settings: PartSettings) -> str:
    """A short hash of the settings dataclass and :data:`CACHE_VERSION`."""
    text = json.dumps({"cache_version": CACHE_VERSION, **asdict(settings)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached(cache: Path, part: str, settings: PartSettings, build: Callable[[Path], None]
           ) -> tuple[Path, bool]:
    """``(cache/<part>-<key>, reused)``: the folder is reused when it exists; otherwise
    ``build(folder)`` fills a scratch folder that is renamed into place once complete, so an
    interrupted run leaves nothing half made. The settings are written beside as JSON."""
    folder = cache / f"{part}-{cache_key(settings)}"
    if folder.is_dir():
        return folder, True
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / "settings.json").write_text(json.dumps(asdict(settings), indent=2))
    build(scratch)
    scratch.rename(folder)
    return folder, False
