"""Nearest-neighbour search (exact torch, FAISS) and k-means."""

from __future__ import annotations

import pytest
import torch

from camkit.embedding import search
from camkit.embedding.search import FaissIndex, TorchIndex, kmeans, make_index


def _points(n: int = 300, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_torch_search_matches_a_brute_force_loop(monkeypatch) -> None:
    monkeypatch.setattr(search, "QUERY_ELEMENTS", 64)  # several bank chunks per search
    bank, queries = _points(), _points(5, seed=1)
    distances, indices = TorchIndex(bank).search(queries, 3)
    for q in range(5):
        loop = sorted((sum((float(a) - float(b)) ** 2 for a, b in zip(queries[q], bank[i],
                                                                      strict=True)), i)
                      for i in range(len(bank)))[:3]
        assert indices[q].tolist() == [i for _, i in loop]
        torch.testing.assert_close(distances[q], torch.tensor([d for d, _ in loop]),
                                   atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_faiss_and_exact_search_return_the_same_neighbours(kind: str) -> None:
    pytest.importorskip("faiss")
    bank, queries = _points(), _points(20, seed=1)  # random floats: no ties
    options = {"nlist": 6, "nprobe": 6} if kind == "ivf" else {}
    got_d, got_i = FaissIndex(bank, kind, **options).search(queries, 4)
    want_d, want_i = TorchIndex(bank).search(queries, 4)
    assert torch.equal(got_i, want_i)
    torch.testing.assert_close(got_d, want_d, atol=1e-4, rtol=1e-4)


def test_auto_picks_exact_search_for_small_banks_and_faiss_for_large_ones(monkeypatch) -> None:
    assert make_index(_points(), "auto").name == "torch"
    monkeypatch.setattr(search, "AUTO_FAISS_MIN", 100)
    if search.faiss_available():
        assert make_index(_points(), "auto", nlist=4).name == "faiss-ivf"
    monkeypatch.setattr(search, "faiss_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="faiss is not installed"):
        assert make_index(_points(), "auto").name == "torch"
    with pytest.raises(ModuleNotFoundError, match="pip install"):
        make_index(_points(), "faiss")


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="empty bank"):
        make_index(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="unknown search backend"):
        make_index(_points(), "annoy")
    with pytest.raises(ValueError, match="k=0"):
        TorchIndex(_points(10)).search(_points(2), 0)
    with pytest.raises(ValueError, match="k=11"):
        TorchIndex(_points(10)).search(_points(2), 11)


def test_kmeans_recovers_separated_blobs() -> None:
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(90) % 3
    points = centres[truth] + 0.3 * torch.randn(90, 2, generator=g)
    centroids, assignment = kmeans(points, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(assignment, torch.cdist(points, centroids).argmin(dim=1))
    # the same partition as the truth, up to renaming the clusters
    pairs = {(int(a), int(t)) for a, t in zip(assignment, truth, strict=True)}
    assert len(pairs) == 3
    for c in range(3):
        torch.testing.assert_close(centroids[c], points[assignment == c].mean(0))
    with pytest.raises(ValueError, match="n_clusters=91"):
        kmeans(points, 91)
