"""Training checkpoints of the memory: model, optimizer, RNG states, epoch, history and the
best state so far (for early stopping), written atomically as safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..artifacts import check_tensors, read_safetensors, write_safetensors
from .module import BiasReducingMemory

CHECKPOINT_NAME = "memory-checkpoint.safetensors"
CHECKPOINT_FORMAT = "camkit.memory-checkpoint"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {f"optimizer.{pid}.{key}": value for pid, entry in state["state"].items()
               for key, value in entry.items() if isinstance(value, Tensor)}
    scalars = {f"{pid}.{key}": value for pid, entry in state["state"].items()
               for key, value in entry.items() if not isinstance(value, Tensor)}
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor],
                       header: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in header["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": header["param_groups"]})


def save_checkpoint(path: Path, memory: BiasReducingMemory, optimizer: torch.optim.Optimizer,
                    epoch: int, settings: dict[str, Any], history: list[dict[str, Any]],
                    best: dict[str, Tensor] | None = None) -> None:
    """Write model, optimizer, RNG states, epoch, history and the ``best`` state dict so far
    (early stopping) atomically (safetensors)."""
    optim_tensors, optim_header = _optimizer_tensors(optimizer)
    tensors = {f"memory.{k}": v for k, v in memory.state_dict().items()} | optim_tensors
    tensors |= {f"best.{k}": v for k, v in (best or {}).items()}
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    header = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "settings": settings,
              "history": history, "optimizer": optim_header}
    write_safetensors(tensors, header, path)


def load_checkpoint(path: Path, memory: BiasReducingMemory, optimizer: torch.optim.Optimizer,
                    settings: dict[str, Any]
                    ) -> tuple[int, list[dict[str, Any]], dict[str, Tensor] | None]:
    """Restore a :func:`save_checkpoint` file into ``memory`` and ``optimizer`` (and the
    global RNG states); returns ``(epochs done, history, best state or None)``. Refuses a
    checkpoint of a run with other settings."""
    tensors, header = read_safetensors(path, "memory checkpoint")
    if header.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a memory training checkpoint")
    if header["settings"] != settings:
        changed = sorted(k for k in settings | header["settings"]
                         if settings.get(k) != header["settings"].get(k))
        raise ValueError(f"{path} belongs to a run with other settings ({changed}); pass "
                         "resume=False or another checkpoint_dir to start afresh")
    expected = {f"memory.{k}": (tuple(v.shape), v.dtype) for k, v in memory.state_dict().items()}
    check_tensors({k: v for k, v in tensors.items() if k.startswith("memory.")}, expected, path,
                  "memory checkpoint")
    device = memory.keys.device
    try:
        memory.load_state_dict({k.removeprefix("memory."): v.to(device)
                                for k, v in tensors.items() if k.startswith("memory.")})
        _restore_optimizer(optimizer, {k: v.to(device) for k, v in tensors.items()
                                       if k.startswith("optimizer.")}, header["optimizer"])
        torch.set_rng_state(tensors["rng.cpu"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
        best = {k.removeprefix("best."): v.to(device) for k, v in tensors.items()
                if k.startswith("best.")}
        return int(header["epoch"]), list(header["history"]), best or None
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is a damaged memory training checkpoint ({err!r}); delete "
                         "it or pass resume=False (--no-resume) to start afresh") from None
