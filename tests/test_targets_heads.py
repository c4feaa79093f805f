"""Classifier-head targets: logits, softmax, sigmoid, one-logit binary heads and raw scores, each
against its formula and through ``camkit.explain`` against a hand-written score function; and
pytorch-grad-cam's list of one target object per image."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.detection import BoxScoreTarget
from camkit.heads import (
    BinaryClassifierOutputTarget,
    ClassifierOutputSigmoidTarget,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    RawScoresOutputTarget,
)
from camkit.targets import resolve
from tests.models import TinyDeepHead


class OneLogit(nn.Module):
    """TinyDeepHead with one output, squeezed to ``(B,)``: a binary classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.net = TinyDeepHead(classes=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[:, 0]


@pytest.fixture
def logits() -> Tensor:
    return torch.randn(3, 5, generator=torch.Generator().manual_seed(7))


def test_softmax_and_sigmoid_read_probabilities(logits: Tensor) -> None:
    softmax = resolve(ClassifierOutputSoftmaxTarget([[1, 4], [0, 0], [2, 3]]), logits, 3)
    torch.testing.assert_close(
        softmax.score(logits), logits.softmax(1).gather(1, torch.tensor([[1, 4], [0, 0], [2, 3]])))
    sigmoid = resolve(ClassifierOutputSigmoidTarget(2), logits, 3)
    torch.testing.assert_close(sigmoid.score(logits), logits[:, 2:3].sigmoid())
    assert sigmoid.indices.tolist() == [[2], [2], [2]]


def test_predicted_class_and_fixed_indices_under_perturbation(logits: Tensor) -> None:
    score_fn = resolve(ClassifierOutputSoftmaxTarget(), logits, 3)
    assert score_fn.indices[:, 0].tolist() == logits.argmax(1).tolist()
    other = torch.randn(2, 5)
    rows = torch.tensor([2, 0])
    expected = other.softmax(1).gather(1, score_fn.indices[rows])
    torch.testing.assert_close(score_fn.score(other, rows), expected)


def test_binary_head_scores_the_logit_or_its_negation() -> None:
    z = torch.tensor([1.5, -0.5, 0.25])
    predicted = resolve(BinaryClassifierOutputTarget(), z, 3)
    assert predicted.indices[:, 0].tolist() == [1, 0, 1]
    torch.testing.assert_close(predicted.score(z)[:, 0], z.abs())
    negative = resolve(BinaryClassifierOutputTarget(0), z[:, None], 3)
    torch.testing.assert_close(negative.score(z[:, None])[:, 0], -z)
    with pytest.raises(ValueError, match="one logit per image"):
        resolve(BinaryClassifierOutputTarget(), torch.randn(3, 2), 3)


def test_raw_scores_are_the_output_columns(logits: Tensor) -> None:
    torch.testing.assert_close(RawScoresOutputTarget().scores(logits), logits)
    torch.testing.assert_close(RawScoresOutputTarget().scores(logits[:, 0]), logits[:, :1])


def test_binary_gradcam_matches_a_hand_written_score(images: Tensor) -> None:
    model = OneLogit().eval()
    ours = camkit.explain(model, images, BinaryClassifierOutputTarget(0), "gradcam",
                          layer="net.body")
    by_hand = camkit.explain(model, images, lambda z: -z, "gradcam", layer="net.body")
    torch.testing.assert_close(ours["gradcam"], by_hand["gradcam"])
    assert ours.targets.tolist() == [[0]] * images.shape[0]


def test_softmax_gradcam_matches_a_hand_written_score(deep: nn.Module, images: Tensor) -> None:
    ours = camkit.explain(deep, images, ClassifierOutputSoftmaxTarget([[0, 3]] * 3),
                          ["gradcam", "ablationcam"], layer="body")
    by_hand = camkit.explain(deep, images, lambda z: z.softmax(1)[:, [0, 3]],
                             ["gradcam", "ablationcam"], layer="body")
    for method in ours:
        torch.testing.assert_close(ours[method], by_hand[method])


def test_logit_target_is_the_class_indices(deep: nn.Module, images: Tensor) -> None:
    ours = camkit.explain(deep, images, camkit.ClassifierOutputTarget([[1, 2]] * 3), "gradcam",
                          layer="body")
    plain = camkit.explain(deep, images, [[1, 2]] * 3, "gradcam", layer="body")
    torch.testing.assert_close(ours.raw["gradcam"], plain.raw["gradcam"])
    assert ours.targets.tolist() == [[1, 2]] * 3


def test_one_target_object_per_image_as_pytorch_grad_cam_takes_them(
        deep: nn.Module, images: Tensor) -> None:
    methods = ["gradcam", "ablationcam"]
    listed = camkit.explain(deep, images, [ClassifierOutputSoftmaxTarget(c) for c in (0, 3, 1)],
                            methods, layer="body")
    table = camkit.explain(deep, images, ClassifierOutputSoftmaxTarget([0, 3, 1]), methods,
                           layer="body")
    assert listed.targets.tolist() == [[0], [3], [1]]
    for method in methods:
        torch.testing.assert_close(listed.raw[method], table.raw[method])
    chosen = [ClassifierOutputTarget(0), ClassifierOutputSoftmaxTarget(3),
              ClassifierOutputTarget(1)]
    mixed = camkit.explain(deep, images, chosen, methods, layer="body")
    assert mixed.targets is None  # classes read from different scores: custom scores
    for b, target in enumerate(chosen):
        alone = camkit.explain(deep, images[b:b + 1], target, methods, layer="body")
        for method in methods:
            torch.testing.assert_close(mixed.raw[method][b:b + 1], alone.raw[method])


def test_per_image_box_targets_are_per_image_boxes() -> None:
    found = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
              "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.7])}] * 2
    boxes = torch.tensor([[[0.0, 0, 10, 10]], [[20.0, 20, 30, 30]]])
    labels = torch.tensor([[1], [2]])
    listed = resolve([BoxScoreTarget(boxes[0], labels[0]), BoxScoreTarget(boxes[1], labels[1])],
                     found, 2)
    rows = torch.tensor([1, 1, 0])
    torch.testing.assert_close(listed.score(found), BoxScoreTarget(boxes, labels).scores(found))
    torch.testing.assert_close(listed.score(found[:1] * 3, rows),
                               torch.tensor([[0.7], [0.7], [0.9]]))


def test_lists_of_targets_that_cannot_be_per_image_say_why(logits: Tensor) -> None:
    with pytest.raises(ValueError, match="3 target objects for a batch of 2"):
        resolve([ClassifierOutputTarget(1)] * 3, logits[:2], 2)
    with pytest.raises(TypeError, match="scores the whole batch"):
        resolve([lambda z: z[:, 0], lambda z: z[:, 1]], logits[:2], 2)
    with pytest.raises(ValueError, match="same number of scores"):
        resolve([ClassifierOutputTarget(1), ClassifierOutputSoftmaxTarget([[1, 2]] * 2)],
                logits[:2], 2).score(logits[:2])
