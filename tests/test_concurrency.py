"""Several threads explaining one model: every call is correct and the model's state is
restored exactly (borrows of one model are serialised, guided switches are per pass)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

import camkit
from tests.models import TinyCNN

METHODS = ("gradcam", "guided-backprop", "scorecam")


def test_concurrent_calls_on_one_model_are_correct_and_restore_its_state():
    torch.manual_seed(0)
    model = TinyCNN(classes=4)
    model.train()
    model.fc.weight.requires_grad_(False)
    training = [m.training for m in model.modules()]
    requires = [p.requires_grad for p in model.parameters()]
    images = [torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(i))
              for i in range(8)]
    expected = [camkit.explain(model, x, 1, METHODS, "features") for x in images]

    def call(i: int) -> camkit.Explanation:
        return camkit.explain(model, images[i % 8], 1, METHODS, "features")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(call, range(32)))
    for i, expl in enumerate(results):
        for method in METHODS:
            torch.testing.assert_close(expl[method], expected[i % 8][method])
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == requires


def test_guided_maps_of_two_models_in_two_threads_do_not_mix():
    models = [TinyCNN(classes=3), TinyCNN(classes=3, inplace=True)]
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    expected = [camkit.explain(m, x, 0, ["guided-backprop", "gradcam"], "features")
                for m in models]

    def call(i: int) -> camkit.Explanation:
        return camkit.explain(models[i % 2], x, 0, ["guided-backprop", "gradcam"], "features")

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(call, range(24)))
    for i, expl in enumerate(results):
        torch.testing.assert_close(expl["guided-backprop"], expected[i % 2]["guided-backprop"])
