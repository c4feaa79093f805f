"""The one file format of camkit's artifacts: M-CAM memories, embedding weight banks, training
checkpoints and the demo's networks (DESIGN principle 7).

An artifact is one safetensors file. Its JSON config lives **in the safetensors header**, under
the metadata key ``"camkit"``, so the tensors and their description can never be separated or
mismatched. Every config names its ``format`` (``"camkit.memory"``, ``"camkit.weight-bank"``,
...) and, for published artifacts, a ``format_version``. Reading never unpickles: a damaged
file, a foreign file, another format or version, and tensors whose names, shapes, dtypes or
values do not match what the config declares each give a specific ``ValueError``. Writes are
atomic (a temporary file beside the target, then ``os.replace``), so an interrupted save never
leaves a truncated file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

METADATA_KEY = "camkit"
# What a config declares for each tensor: its shape and dtype.
Expected = dict[str, tuple[tuple[int, ...], torch.dtype]]


def write_safetensors(tensors: dict[str, Tensor], header: dict[str, Any], path: str | Path) -> Path:
    """Write ``tensors`` and the JSON ``header`` (under metadata key ``"camkit"``) to ``path``
    atomically: a temporary file beside it, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(cpu, tmp, metadata={METADATA_KEY: json.dumps(header)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_safetensors(
    path: str | Path, kind: str, device: str | torch.device = "cpu", tensors: bool = True
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, header)`` of a file written by :func:`write_safetensors`; ``kind`` names
    what the file should be in error messages. Clear errors for a missing file, a file that
    is not safetensors, or one without camkit's header. Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} file at {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(
            f"{path} is not a readable {kind} (corrupt or not a safetensors file): {err}"
        ) from err
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} is a safetensors file but not a camkit {kind} (no "
                         f"{METADATA_KEY!r} entry in its header)")
    try:
        header = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the {kind} header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the {kind} header is a JSON {type(header).__name__}, not an "
                         "object; the file was not written by camkit")
    return loaded, header


def check_format(header: dict[str, Any], fmt: str, version: int | None, path: str | Path,
                 kind: str) -> None:
    """Refuse a header of another ``format`` or (when ``version`` is given) format version."""
    if header.get("format") != fmt:
        raise ValueError(f"{path} holds {header.get('format')!r}, not {fmt!r} (the format of "
                         f"the {kind})")
    found = header.get("format_version")
    if version is not None and found != version:
        newer = isinstance(found, int) and found > version
        raise ValueError(f"{path} has {kind} format version {found!r}; this camkit reads "
                         f"version {version}" + (" (upgrade camkit)" if newer else ""))


def check_tensors(tensors: dict[str, Tensor], expected: Expected, path: str | Path,
                  kind: str) -> None:
    """Refuse tensors that differ from ``expected`` in names, shapes or dtypes, and floating
    tensors holding NaN or infinite values."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: the {kind} tensors do not match its config (missing "
                         f"{missing}, unexpected {unexpected})")
    for name, tensor in tensors.items():
        shape, dtype = expected[name]
        if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            raise ValueError(f"{path}: tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, "
                             f"expected {dtype} {tuple(shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: tensor {name!r} holds NaN or infinite values; the "
                             f"{kind} is damaged")
