"""Saving and loading M-CAM memories without executing code (DESIGN principle 7).

File format: one safetensors file. The tensors are the memory's ``state_dict`` (float32);
the JSON config lives **in the safetensors header**, under the metadata key ``"camkit"``, so
the tensors and their description can never be separated or mismatched. The config is::

    {"format": "camkit.memory", "format_version": 1, "layer": ..., "channels": c,
     "spatial_size": [h, w], "input_size": [H, W], "num_classes": n_cls,
     "class_names": [...], "slots": N, "addr_temperature": T,
     "train_settings": {...}, "metrics": {...}}

Read it without loading the tensors with :func:`read_config`. Writes are atomic (a temporary
file in the same folder, then ``os.replace``), so an interrupted save never leaves a
truncated file under the final name.
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

from .module import BiasReducingMemory

FORMAT = "camkit.memory"
FORMAT_VERSION = 1
METADATA_KEY = "camkit"


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
    return loaded, header


def _check_format(header: dict[str, Any], path: Path) -> None:
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} holds {header.get('format')!r}, not an M-CAM memory ({FORMAT})")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ValueError(
            f"{path} has memory format version {version!r}; this camkit reads version "
            f"{FORMAT_VERSION}" + (" (upgrade camkit)" if newer else "")
        )


def _check_tensors(tensors: dict[str, Tensor], expected: dict[str, Tensor], path: Path) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: the memory tensors do not match its config (missing "
                         f"{missing}, unexpected {unexpected})")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape or tensor.dtype != torch.float32:
            raise ValueError(
                f"{path}: tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, the config "
                f"says float32 {tuple(expected[name].shape)}"
            )


def save_memory(memory: BiasReducingMemory, path: str | Path) -> Path:
    """Write ``memory`` to ``path`` (see the module docstring for the format)."""
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **memory.config()}
    return write_safetensors(memory.state_dict(), header, path)


def read_config(path: str | Path) -> dict[str, Any]:
    """The JSON config of a saved memory, validated, without loading its tensors."""
    _, header = read_safetensors(path, "M-CAM memory", tensors=False)
    _check_format(header, Path(path))
    return header


def load_memory(path: str | Path, map_location: str | torch.device = "cpu") -> BiasReducingMemory:
    """Read a memory written by :func:`save_memory`: checks the format version, the tensor
    names and shapes against the config; never unpickles; leaves the global RNG untouched."""
    path = Path(path)
    tensors, header = read_safetensors(path, "M-CAM memory", map_location)
    _check_format(header, path)
    try:
        with torch.device("meta"):
            memory = BiasReducingMemory.from_config(header)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid memory config ({err!r})") from err
    _check_tensors(tensors, memory.state_dict(), path)
    memory.load_state_dict(tensors, assign=True)
    return memory.eval()
