"""The results folder of a data-set job: shards, the manifest, and how they are written.

Layout of a folder ``DIR``::

    DIR/manifest.json               settings, versions, shard list and completion
    DIR/ids.json                    the image ids of the data set, in order
    DIR/shard-00000.safetensors     the results of images start..stop of shard 0
    DIR/.lock                       locked (lockf) by the job writing the folder

Every file is written to a temporary name in ``DIR``, flushed with ``fsync`` and renamed over
its final name with ``os.replace``, so a reader sees either the old file or the complete new
one. A shard is listed as complete in the manifest only after its file is in place; a job that
dies leaves at most a temporary file, which the next job deletes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

FORMAT = "camkit.batch"
FORMAT_VERSION = 1
MANIFEST, IDS, LOCK = "manifest.json", "ids.json", ".lock"
_held: dict[str, int] = {}  # lock file -> descriptor, of the folders this process writes
_held_guard = threading.Lock()
TEMP_SUFFIX = ".tmp"


class SettingsMismatch(ValueError):
    """A job was asked to write into a folder holding results made with other settings."""


class FolderBusy(ValueError):
    """Another job holds the folder's lock."""


@dataclass
class BatchResult:
    """The results of some images of a data set.

    Attributes:
        index: ``(n,)`` int64 positions in the data set of the explained images, ascending.
        scores: ``(n, K)`` float32 target scores.
        targets: ``(n, K)`` int64 target class indices.
        maps: method → ``(n, K, S, S)`` float16 maps in [0, 1].
        constant: method → ``(n, K)`` bool, maps that were constant (stored as zeros).
        failed: ``(position, reason)`` of the images that could not be read.
    """

    index: np.ndarray
    scores: np.ndarray
    targets: np.ndarray
    maps: dict[str, np.ndarray]
    constant: dict[str, np.ndarray]
    failed: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def positions(self) -> list[int]:
        """Every data-set position this result accounts for, explained or failed."""
        return [*self.index.tolist(), *(i for i, _ in self.failed)]

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays under their names in a shard file."""
        arrays = {"index": self.index, "scores": self.scores, "targets": self.targets}
        arrays |= {f"maps/{m}": v for m, v in self.maps.items()}
        return arrays | {f"constant/{m}": v for m, v in self.constant.items()}

    @classmethod
    def concat(cls, parts: Sequence[BatchResult]) -> BatchResult:
        """The parts as one result, rows sorted by position."""
        order = np.argsort(np.concatenate([p.index for p in parts]), kind="stable")

        def joined(arrays: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(arrays)[order]

        methods = list(parts[0].maps)
        return cls(
            index=joined([p.index for p in parts]),
            scores=joined([p.scores for p in parts]),
            targets=joined([p.targets for p in parts]),
            maps={m: joined([p.maps[m] for p in parts]) for m in methods},
            constant={m: joined([p.constant[m] for p in parts]) for m in methods},
            failed=sorted(f for p in parts for f in p.failed),
        )


def encode(result: BatchResult, ids: Sequence[str] | None = None) -> bytes:
    """A result as safetensors bytes (no code runs when they are read); failures and, for a
    shard, the ids of its rows go into the header's metadata."""
    metadata = {"format": f"{FORMAT}.shard", "format_version": str(FORMAT_VERSION),
                "failed": json.dumps(result.failed)}
    if ids is not None:
        metadata["ids"] = json.dumps(list(ids))
    tensors = {k: np.ascontiguousarray(v) for k, v in result.tensors().items()}
    return safetensors.numpy.save(tensors, metadata=metadata)


def header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (the format: 8-byte length, JSON header)."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


def decode(data: bytes) -> BatchResult:
    """The inverse of :func:`encode`."""
    arrays = safetensors.numpy.load(data)
    failed = json.loads(header_metadata(data)["failed"])
    return BatchResult(
        index=arrays["index"], scores=arrays["scores"], targets=arrays["targets"],
        maps={k.removeprefix("maps/"): v for k, v in arrays.items() if k.startswith("maps/")},
        constant={k.removeprefix("constant/"): v for k, v in arrays.items()
                  if k.startswith("constant/")},
        failed=[(int(i), str(reason)) for i, reason in failed],
    )


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen half-written: a temporary
    file in the same folder, ``fsync``, ``os.replace``, then ``fsync`` of the folder."""
    temp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=1, ensure_ascii=False).encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the folder is damaged") from err


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"model.arch": ..., ...}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """One line per setting that differs: ``name: X in the folder, Y now``."""
    old, new = flatten(stored), flatten(wanted)
    return [f"{key}: {old.get(key)!r} in the folder, {new.get(key)!r} now"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def plan_shards(ids: Sequence[str], shard_size: int) -> list[dict[str, Any]]:
    """The manifest entries of a fresh job: shard ``s`` holds positions
    ``s * shard_size`` to ``(s + 1) * shard_size``."""
    return [{"shard": s, "file": shard_name(s), "start": start,
             "stop": min(start + shard_size, len(ids)), "first_id": ids[start],
             "last_id": ids[min(start + shard_size, len(ids)) - 1], "complete": False}
            for s, start in enumerate(range(0, len(ids), shard_size))]


class Store:
    """A results folder opened for writing by one job (it holds the folder's lock).

    Use :meth:`open`; :attr:`pending` lists the shards still to compute (all of them for a
    new folder; on a rerun those not complete); :meth:`write_shard` stores one.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], ids: list[str], lock: int) -> None:
        self.root, self.manifest, self.ids, self._lock = root, manifest, ids, lock

    @classmethod
    def open(cls, root: Path, settings: dict[str, Any], ids: list[str],
             info: dict[str, Any], versions: dict[str, str]) -> Store:
        """Create the folder's manifest, or check the existing one against ``settings``.

        Raises:
            SettingsMismatch: the folder holds results made with other settings.
            FolderBusy: another job is writing into the folder.
            ValueError: the folder is not empty and holds no manifest.
        """
        root.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(root)
        try:
            manifest = _existing(root, settings, versions)
            if manifest is None:
                manifest = _create(root, settings, ids, info, versions)
            _remove_temporaries(root)
            store = cls(root, manifest, ids, lock)
            store.recheck()
        except BaseException:
            _release_lock(lock)
            raise
        return store

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    @property
    def pending(self) -> list[dict[str, Any]]:
        """The shards not complete, in order."""
        return [s for s in self.shards if not s["complete"]]

    def recheck(self) -> None:
        """Mark as pending (in the manifest on disk too) any complete shard whose file is
        missing or of the wrong size."""
        damaged = [entry for entry in self.shards if entry["complete"] and not _intact(
            self.root / entry["file"], entry["bytes"])]
        for entry in damaged:
            warnings.warn(f"{self.root / entry['file']} is missing or damaged; it will be "
                          "recomputed", RuntimeWarning, stacklevel=4)
            entry.update(complete=False)
        if damaged:
            self.manifest["complete"] = False
            write_json(self.root / MANIFEST, self.manifest)

    def write_shard(self, shard: int, result: BatchResult) -> None:
        """Write shard ``shard`` (its file first, then the manifest entry that lists it)."""
        entry = self.shards[shard]
        expected = set(range(entry["start"], entry["stop"]))
        if set(result.positions) != expected:
            raise RuntimeError(f"shard {shard} got positions {sorted(result.positions)}, "
                               f"expected {entry['start']}..{entry['stop'] - 1}")
        ids = [self.ids[i] for i in result.index.tolist()]
        data = encode(result, ids)
        atomic_write(self.root / entry["file"], data)
        entry.update(complete=True, images=len(result), bytes=len(data),
                     failed=[{"id": self.ids[i], "reason": r} for i, r in result.failed])
        self.manifest["complete"] = not self.pending
        self.manifest["updated"] = now()
        write_json(self.root / MANIFEST, self.manifest)

    def close(self) -> None:
        """Release the folder's lock."""
        _release_lock(self._lock)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _intact(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def _take_lock(root: Path) -> int:
    """Lock ``root/.lock`` for this process: a POSIX record lock (``lockf``), which belongs
    to the process alone, so it dies with it even while forked data-loader workers still
    hold the file open (a ``flock`` would stay held by them). Such a lock does not exclude
    the process itself, so the folders this process holds are also remembered."""
    path = os.path.realpath(root / LOCK)
    with _held_guard:
        if path in _held:
            raise _busy(root)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise _busy(root) from None
            raise
        _held[path] = fd
    return fd


def _release_lock(fd: int) -> None:
    with _held_guard:
        for path, held in list(_held.items()):
            if held == fd:
                del _held[path]
        os.close(fd)


def _busy(root: Path) -> FolderBusy:
    return FolderBusy(f"another camkit job is writing into {root}; wait for it to finish or "
                      "choose another output folder")


def _existing(root: Path, settings: dict[str, Any],
              versions: dict[str, str]) -> dict[str, Any] | None:
    path = root / MANIFEST
    if not path.exists():
        others = [p.name for p in root.iterdir() if p.name != LOCK]
        if others:
            raise ValueError(f"{root} is not empty ({', '.join(sorted(others)[:5])}) and holds "
                             "no camkit manifest; choose a new or empty output folder")
        return None
    manifest = read_json(path)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a camkit.batch manifest of format version "
                         f"{FORMAT_VERSION}; choose another output folder")
    diff = differences(manifest["settings"], settings)
    if diff:
        raise SettingsMismatch(
            f"{root} holds results made with other settings, so this job cannot resume "
            "there:\n  " + "\n  ".join(diff) + "\nRerun with the folder's settings to resume, "
            "or choose another output folder (or delete this one) to start over.")
    old = {k: v for k, v in manifest["versions"].items() if versions.get(k) != v}
    if old:
        warnings.warn(f"resuming {root}, whose shards so far were made with {old}; this run "
                      f"uses {versions}", RuntimeWarning, stacklevel=4)
    return manifest


def _create(root: Path, settings: dict[str, Any], ids: list[str], info: dict[str, Any],
            versions: dict[str, str]) -> dict[str, Any]:
    write_json(root / IDS, ids)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings,
                "versions": versions, "job": info, "images": len(ids), "created": now(),
                "updated": now(), "complete": False,
                "shards": plan_shards(ids, settings["shard_size"])}
    write_json(root / MANIFEST, manifest)
    return manifest


def _remove_temporaries(root: Path) -> None:
    """Delete what a killed job left half-written (never listed in the manifest)."""
    for temp in root.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def iter_complete(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The complete shards of a manifest."""
    return (s for s in manifest["shards"] if s["complete"])
