"""Explaining by weight transfer through ``camkit.explain(methods=["embedding-gradcam"])``."""

from __future__ import annotations

import pytest
import torch

import camkit
from camkit.embedding import fit_weight_bank, transfer_weights
from tests.embedding_fixtures import MARGIN, TinyEmbedding, labelled_images, tiny_embedding

M = 3


@pytest.fixture(scope="module")
def fitted() -> tuple:
    model = tiny_embedding()
    x, labels = labelled_images()
    bank = fit_weight_bank(model, "features", x, labels, triplets_per_image=3, top_m=M,
                           margin=MARGIN, progress=False)
    return model, x, bank


def _transfer(model: TinyEmbedding, x: torch.Tensor, bank, **options: object):
    return camkit.explain(model, x, methods=["embedding-gradcam"], layer="features", bank=bank,
                          **options)


def test_the_method_is_registered() -> None:
    assert "embedding-gradcam" in camkit.available_methods()


def test_transfer_on_a_bank_image_reproduces_its_stored_weight_map(fitted) -> None:
    model, x, bank = fitted
    expl = _transfer(model, x[[4, 7]], bank)
    info = expl.details["embedding-gradcam"]
    assert info["neighbours"][:, 0].tolist() == [4, 7]
    assert torch.all(info["distances"] < 1e-6)
    with torch.no_grad():
        acts = model.features(x[[4, 7]])
    for row, i in enumerate([4, 7]):
        stored = sum(float(w) * acts[row, int(c)] for c, w in zip(bank.channels[i],
                                                                  bank.weights[i], strict=True))
        torch.testing.assert_close(expl.raw["embedding-gradcam"][row, 0], stored)
    assert expl["embedding-gradcam"].shape == (2, 1, 12, 12)


def test_transfer_builds_no_graph_and_runs_no_backward(fitted, monkeypatch) -> None:
    model, x, bank = fitted
    saved: list[int] = []
    seen: list[tuple[bool, bool]] = []

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a backward pass ran during the transfer explanation")

    monkeypatch.setattr(torch.autograd, "grad", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    handle = model.features.register_forward_hook(
        lambda _m, _i, out: seen.append((torch.is_grad_enabled(), out.requires_grad)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t,
                                                      lambda t: t):
            expl = _transfer(model, x[:3], bank)
    finally:
        handle.remove()
    assert saved == [] and seen == [(False, False)]
    assert not expl.outputs.requires_grad and expl.outputs.grad_fn is None
    assert not expl.raw["embedding-gradcam"].requires_grad


def test_k_nearest_neighbours_average_then_retake_the_top_m(fitted) -> None:
    model, x, bank = fitted
    query = x[:2] + 0.3 * torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb = model(query)
    got = transfer_weights(bank, emb, neighbours=4)
    distances = torch.cdist(torch.nn.functional.normalize(emb, dim=1), bank.embeddings) ** 2
    for b in range(2):
        nearest = distances[b].argsort()[:4]
        assert sorted(got.neighbours[b].tolist()) == sorted(nearest.tolist())
        dense = torch.zeros(bank.num_channels)
        for i in nearest.tolist():
            dense[bank.channels[i]] += bank.weights[i] / 4
        values, channels = dense.topk(M)
        assert got.channels[b].tolist() == channels.tolist()
        torch.testing.assert_close(got.weights[b], values)


def test_kmeans_transfer_uses_the_nearest_cluster(fitted) -> None:
    model, x, bank = fitted
    expl = _transfer(model, x[:4], bank, transfer="kmeans", n_clusters=3)
    clusters = bank.clusters(3)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(x[:4]), dim=1)
    nearest = torch.cdist(emb, clusters.centroids).argmin(dim=1)
    info = expl.details["embedding-gradcam"]
    assert info["neighbours"][:, 0].tolist() == nearest.tolist()
    assert torch.equal(info["channels"], clusters.channels[nearest])


def test_the_same_map_for_every_target(fitted) -> None:
    model, x, bank = fitted
    expl = camkit.explain(model, x[:2], [[0, 1], [2, 3]], ["embedding-gradcam"], "features",
                          bank=bank)
    maps = expl["embedding-gradcam"]
    assert maps.shape == (2, 2, 12, 12) and torch.equal(maps[:, 0], maps[:, 1])


def test_bank_of_another_layer_channel_count_or_embedding_size_is_refused(fitted) -> None:
    model, x, bank = fitted
    with pytest.raises(ValueError, match="fitted on layer 'features'"):
        camkit.explain(model, x[:1], methods=["embedding-gradcam"], layer="features.1",
                       bank=bank)
    other = TinyEmbedding(dim=5, channels=6).eval()
    with pytest.raises(ValueError, match="8 channels"):
        _transfer(other, x[:1], bank)
    wider = TinyEmbedding(dim=7).eval()
    with pytest.raises(ValueError, match="5-d embeddings"):
        _transfer(wider, x[:1], bank)


def test_missing_or_wrong_bank_is_refused(fitted) -> None:
    model, x, _ = fitted
    with pytest.raises(ValueError, match="needs a weight bank"):
        camkit.explain(model, x[:1], methods=["embedding-gradcam"], layer="features")
    with pytest.raises(TypeError, match="WeightBank"):
        _transfer(model, x[:1], {"weights": 1})
    with pytest.raises(ValueError, match="unknown transfer"):
        _transfer(model, x[:1], fitted[2], transfer="cluster")
