"""Explaining whole data sets: resumable jobs written to shards, locally or on Ray.

``explain_dataset(data, out, methods, model=...)`` streams a data set through
``camkit.explain`` and stores float16 maps, scores and targets in safetensors shards with a
JSON manifest; ``open_results(out)`` reads them back by image id. See ``docs/batch.md``.
"""

from .job import Job, ModelSpec, TargetSetting
from .results import DatasetResults, ImageResult, open_results
from .runner import explain_dataset
from .sources import DatasetSource, FileSource, as_source
from .store import FolderBusy, SettingsMismatch

__all__ = [
    "DatasetSource", "FileSource", "FolderBusy", "ImageResult", "Job", "ModelSpec",
    "DatasetResults", "SettingsMismatch", "TargetSetting", "as_source",
    "explain_dataset", "open_results",
]
