"""A data-set job killed with SIGKILL mid-way, then rerun: nothing lost, nothing duplicated,
and no partial shard is ever listed in the manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
from PIL import Image

from camkit.batch import ModelSpec, explain_dataset, open_results

# The job, as a script: a data set of image files whose loading becomes slow after the first
# four images when SLOW is set, so the kill lands while shards remain. The rerun runs the
# same script without SLOW (the data and the settings are the same).
JOB = """
import os, sys, time
import torch
from camkit.batch import ModelSpec, explain_dataset
from camkit.data import load_image

class Images:
    def __init__(self, paths):
        self.paths = paths
    def __len__(self):
        return len(self.paths)
    def __getitem__(self, i):
        if os.environ.get("SLOW") and i >= 4:
            time.sleep(0.4)
        return load_image(self.paths[i])

torch.set_num_threads(1)
folder, out = sys.argv[1], sys.argv[2]
names = sorted(os.listdir(folder))
explain_dataset(Images([os.path.join(folder, n) for n in names]), out, ["gradcam", "hirescam"],
                model=ModelSpec("mobilenet_v3_small", random_init=True), ids=names,
                batch_size=2, shard_size=2, workers=0, map_size=32, progress=False)
"""


def check_listed_shards(out: Path) -> int:
    """Every shard the manifest lists as complete is whole: its file has the listed size and
    loads with the listed number of rows. Returns how many are listed."""
    manifest = json.loads((out / "manifest.json").read_text())
    complete = [s for s in manifest["shards"] if s["complete"]]
    for entry in complete:
        data = (out / entry["file"]).read_bytes()
        assert len(data) == entry["bytes"]
        assert safetensors.numpy.load(data)["index"].shape == (entry["images"],)
    return len(complete)


def test_killed_job_resumes_to_the_same_maps(tmp_path: Path) -> None:
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
            folder / f"{i:02d}.png")
    script = tmp_path / "job.py"
    script.write_text(JOB)
    command = [sys.executable, str(script), str(folder), str(out)]

    job = subprocess.Popen(command, env=os.environ | {"SLOW": "1"})
    snapshots = listed = 0
    deadline = time.monotonic() + 120
    while listed < 2 and job.poll() is None and time.monotonic() < deadline:
        if (out / "manifest.json").exists():
            listed = check_listed_shards(out)
            snapshots += 1
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert snapshots > 0 and check_listed_shards(out) >= 2
    killed = json.loads((out / "manifest.json").read_text())
    assert not killed["complete"]
    partial = open_results(out)
    assert not partial.complete and list(partial) == sorted(os.listdir(folder))[: len(partial)]
    first_shard = (out / "shard-00000.safetensors").stat()

    subprocess.run(command, check=True, env={k: v for k, v in os.environ.items() if k != "SLOW"})
    resumed = open_results(out)
    assert resumed.complete and check_listed_shards(out) == 5
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first_shard.st_mtime_ns
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".lock"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = explain_dataset(
            f"folder:{folder}", tmp_path / "reference", ["gradcam", "hirescam"],
            model=ModelSpec("mobilenet_v3_small", random_init=True), batch_size=2,
            shard_size=2, workers=0, map_size=32, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert list(resumed) == list(reference) == sorted(os.listdir(folder))
    for method in ("gradcam", "hirescam"):
        assert torch.equal(resumed.maps(method), reference.maps(method))
    assert torch.equal(resumed.scores(), reference.scores())
    assert torch.equal(resumed.targets(), reference.targets())


# A job that takes the folder's lock, forks a data-loader-like child that keeps the lock file
# open, and is then killed with SIGKILL: the child is orphaned and goes on holding the file.
ORPHANING_JOB = """
import os, signal, sys, time
from pathlib import Path
from camkit.batch.store import _take_lock
_take_lock(Path(sys.argv[1]))
child = os.fork()
if child == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1), os.dup2(null, 2)  # let the caller's pipes close
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_dead_jobs_lock_does_not_block_while_its_workers_live(tmp_path: Path) -> None:
    from camkit.batch.store import Store

    out = tmp_path / "out"
    out.mkdir()
    job = subprocess.run([sys.executable, "-c", ORPHANING_JOB, str(out)], capture_output=True,
                         text=True, env=os.environ | {"PYTHONPATH": "src"}, timeout=120)
    orphan = int(job.stdout.split()[0])
    try:
        assert job.returncode == -signal.SIGKILL
        with Store.open(out, {"shard_size": 1}, ["x"], {}, {}) as store:  # at once
            assert store.pending
    finally:
        os.kill(orphan, signal.SIGKILL)
