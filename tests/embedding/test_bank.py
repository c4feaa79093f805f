"""Fitting, saving and loading weight banks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from camkit.artifacts import write_safetensors
from camkit.embedding import WeightBank, fit_weight_bank, sample_triplets
from tests.embedding_fixtures import MARGIN, labelled_images, loop_gradient, tiny_embedding

T, M = 4, 3


@pytest.fixture(scope="module")
def fitted() -> tuple:
    model = tiny_embedding()
    x, labels = labelled_images()
    bank = fit_weight_bank(model, "features", x, labels, triplets_per_image=T, top_m=M,
                           margin=MARGIN, batch_size=5, seed=3, progress=False)
    return model, x, labels, bank


def test_fitted_bank_matches_a_loop_over_images_and_triplets(fitted) -> None:
    model, x, labels, bank = fitted
    with torch.no_grad():
        emb = model(x)
    triplets = sample_triplets(emb, labels, T, MARGIN, generator=torch.Generator().manual_seed(3))
    assert bank.layer == "features" and bank.num_channels == 8 and len(bank) == 12
    torch.testing.assert_close(bank.embeddings, F.normalize(emb, dim=1))
    assert torch.equal(bank.labels, labels)
    for i in (0, 4, 8, 10, 11):  # every batch of 5 and every class
        gradients = [loop_gradient(model, x[i], x[p], x[n])[1] for p, n in
                     zip(triplets.positives[i].tolist(), triplets.negatives[i].tolist(),
                         strict=True)]
        beta = -torch.stack(gradients).mean(dim=(0, 2, 3))
        values, channels = beta.topk(M)
        assert bank.channels[i].tolist() == channels.tolist()
        torch.testing.assert_close(bank.weights[i], values, atol=1e-6, rtol=1e-4)
        active = sum(float(((emb[i] - emb[p]) ** 2).sum() - ((emb[i] - emb[n]) ** 2).sum())
                     + MARGIN > 0 for p, n in zip(triplets.positives[i].tolist(),
                                                  triplets.negatives[i].tolist(), strict=True))
        assert int(bank.active[i]) == active


def test_gradcampp_bank_and_options_are_recorded(fitted) -> None:
    model, x, labels, _ = fitted
    bank = fit_weight_bank(model, "features", x, labels, triplets_per_image=2, top_m=None,
                           variant="gradcam++", sign=1.0, hinge=False, normalize=False,
                           progress=False)
    assert bank.top_m == 8 and not bank.normalized
    assert bank.fit_settings == {"triplets_per_image": 2, "margin": 0.2, "mode": "active",
                                 "sign": 1.0, "hinge": False, "variant": "gradcam++", "seed": 0}
    with torch.no_grad():
        torch.testing.assert_close(bank.embeddings, model(x))


def test_fitting_accepts_a_dataset_of_tuples(fitted) -> None:
    model, x, labels, bank = fitted
    items = [(x[i], int(labels[i]), "extra") for i in range(len(x))]
    again = fit_weight_bank(model, "features", items, labels, triplets_per_image=T, top_m=M,
                            margin=MARGIN, seed=3, progress=False)
    assert torch.equal(again.channels, bank.channels)
    torch.testing.assert_close(again.weights, bank.weights)


def test_fitting_refuses_bad_data(fitted) -> None:
    model, x, labels, _ = fitted
    with pytest.raises(ValueError, match="at least two classes"):
        fit_weight_bank(model, "features", x, torch.zeros(12, dtype=torch.long))
    with pytest.raises(ValueError, match="no images"):
        fit_weight_bank(model, "features", x[:0], labels[:0])
    with pytest.raises(ValueError, match="11 labels for 12 images"):
        fit_weight_bank(model, "features", x, labels[:11])
    with pytest.raises(ValueError, match="unknown variant"):
        fit_weight_bank(model, "features", x, labels, variant="scorecam")
    with pytest.raises(ValueError, match="no layer named"):
        fit_weight_bank(model, "featurez", x, labels)


def test_save_load_round_trip(fitted, tmp_path: Path) -> None:
    bank = fitted[3]
    path = bank.save(tmp_path / "sub" / "bank.safetensors")
    loaded = WeightBank.load(path)
    for name, tensor in bank.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name
    assert loaded.config() == bank.config()
    assert loaded.config()["format_version"] == 1


def _tamper(bank: WeightBank, path: Path, **changes: object) -> Path:
    tensors = {**bank.tensors(), **{k: v for k, v in changes.items() if k in bank.tensors()}}
    header = {**bank.config(), **{k: v for k, v in changes.items() if k not in tensors}}
    return write_safetensors(tensors, header, path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"format": "camkit.memory"}, "not .camkit.weight-bank."),
    ({"format_version": 2}, "format version 2"),
    ({"top_m": 4}, "expected torch.int64"),
    ({"num_channels": 2}, "channel indices outside"),
    ({"embedding_dim": 7}, "expected torch.float32"),
    ({"layer": None, "size": "many"}, "invalid embedding weight bank config"),
])
def test_load_validates_the_file(fitted, tmp_path: Path, changes: dict, message: str) -> None:
    path = _tamper(fitted[3], tmp_path / "bad.safetensors", **changes)
    with pytest.raises(ValueError, match=message):
        WeightBank.load(path)


def test_load_refuses_non_finite_weights_and_missing_tensors(fitted, tmp_path: Path) -> None:
    bank = fitted[3]
    weights = bank.weights.clone()
    weights[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        WeightBank.load(_tamper(bank, tmp_path / "nan.safetensors", weights=weights))
    tensors = {k: v for k, v in bank.tensors().items() if k != "active"}
    write_safetensors(tensors, bank.config(), tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="do not match"):
        WeightBank.load(tmp_path / "missing.safetensors")


def test_load_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        WeightBank.load(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable"):
        WeightBank.load(tmp_path / "junk.safetensors")


def test_an_empty_bank_is_refused() -> None:
    with pytest.raises(ValueError, match="empty weight bank"):
        WeightBank(torch.zeros(0, 4), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2),
                   torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                   torch.zeros(0, dtype=torch.bool), "features", 8)


def test_cluster_weights_average_the_members(fitted) -> None:
    bank = fitted[3]
    clusters = bank.clusters(3, seed=1)
    assignment = torch.cdist(bank.embeddings, clusters.centroids).argmin(dim=1)
    assert clusters.sizes.tolist() == torch.bincount(assignment, minlength=3).tolist()
    for c in range(3):
        dense = torch.zeros(8)
        members = (assignment == c).nonzero().flatten().tolist()
        for i in members:
            for channel, weight in zip(bank.channels[i].tolist(), bank.weights[i].tolist(),
                                       strict=True):
                dense[channel] += weight / len(members)
        values, channels = dense.topk(M)
        assert clusters.channels[c].tolist() == channels.tolist()
        torch.testing.assert_close(clusters.weights[c], values)
