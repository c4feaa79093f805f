"""Score-CAM (and SS-/IS-CAM), Ablation-CAM, Eigen-CAM, EigenGrad-CAM and occlusion against
independent, slow, loop-based computations, plus their invariances and the borrowed model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import camkit
from camkit.methods.eigen import principal_projection
from camkit.methods.score import channel_softmax_weights
from tests.models import TinyCNN

TOL = 1e-5
# bf16 autocast of the masked passes: logits carry ~3 significant digits, so the weights and
# the normalised maps move by up to a few 1e-3 on these tiny models; the stated bound is 3e-2.
BF16_TOL = 3e-2
PERTURBATION = ["scorecam", "sscam", "iscam", "ablationcam", "occlusion"]
ALL = [*PERTURBATION, "eigencam", "eigengradcam"]
FAST = {"num_samples": 3, "window": 3, "stride": 2}  # small options for speed


class ResidualNet(nn.Module):
    """stem (BN) → "body" (target layer) → 1×1 conv + skip from the stem → in-place ReLU →
    GAP → fc. The part after "body" needs the stem's output too (a side value for the split),
    and "body" has a dead channel and a constant non-zero channel (empty Score-CAM masks)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, stride=2), nn.BatchNorm2d(6),
                                  nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.mix = nn.Conv2d(6, 6, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, classes)
        with torch.no_grad():
            self.stem[1].running_mean.uniform_(-0.2, 0.2)
            conv = self.body[0]
            conv.weight[1] = 0
            conv.bias[1] = -1.0  # dead after ReLU: all zeros
            conv.weight[2] = 0
            conv.bias[2] = 0.5  # constant 0.5

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        y = self.relu(self.mix(self.body(h)) + h)
        return self.fc(y.mean(dim=(2, 3)))


class Untraceable(ResidualNet):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out if out.sum() > -1e9 else -out


class ReadsBatchSize(ResidualNet):
    """Reads the batch size from the input and uses it after the layer: the tail must read it
    from the activation instead of baking the traced value in."""

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        y = self.relu(self.mix(self.body(self.stem(x))))
        return self.fc(y.reshape(n, 6, -1).mean(dim=2))


class ConstantFromInput(ResidualNet):
    """Builds a constant that is not per image from the input (its device) before the layer
    and uses it after: the tail cannot take rows of it, so the split must be refused."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        shift = torch.full((6, 1, 1), 0.1, device=x.device)
        y = self.relu(self.mix(self.body(h)) + h + shift)
        return self.fc(y.mean(dim=(2, 3)))


class Bomb(nn.Module):
    """Identity that raises on batches larger than ``limit`` (i.e. in the perturbation passes)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > self.limit:
            raise RuntimeError("bomb")
        return x


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = ResidualNet()

    def forward(self, x: Tensor, shift: Tensor) -> Tensor:
        return self.net(x) + shift


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and thread synchronisation dominates their
    many small forward passes on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def net() -> ResidualNet:
    torch.manual_seed(0)
    return ResidualNet().eval()


@pytest.fixture
def x() -> Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))


TARGETS = [[0, 4], [4, 0]]  # positive scores


# --- independent loop references ------------------------------------------------------------


def layer_output(model: nn.Module, layer: nn.Module, image: Tensor,
                 replace: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(layer output (C, h, w), model output (n_classes,)) for one image, optionally with the
    layer's output replaced."""
    seen = []

    def hook(_m, _a, out):
        seen.append(out.detach().clone())
        return replace[None] if replace is not None else None

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(image[None])[0]
    finally:
        handle.remove()
    return seen[0][0], out


def reference_post(raw: Tensor, size: tuple[int, int]) -> Tensor:
    maps = F.interpolate(raw.clamp(min=0)[None], size=size, mode="bilinear",
                         align_corners=False)[0]
    flat = maps.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (maps - low) / (high - low + 1e-7)


def reference_scorecam(model, layer, x, targets, weight="class_prob", max_channels=None,
                       variant=lambda mask, i: mask, samples=1):
    """Score-CAM one image, one target, one channel, one sample at a time."""
    size = tuple(x.shape[-2:])
    raws = []
    for b in range(len(x)):
        acts, out = layer_output(model, layer, x[b])
        c_count = acts.shape[0]
        order = sorted(range(c_count), key=lambda k: -float(acts[k].var()))
        keep = order[:max_channels] if max_channels else list(range(c_count))
        per_target = []
        for c in targets[b]:
            scores, ups = [], []
            for k in range(c_count):
                up = F.interpolate(acts[k][None, None], size=size, mode="bilinear",
                                   align_corners=False)[0, 0]
                ups.append(up)
                if k not in keep:
                    scores.append(None)
                    continue
                if up.max() == up.min():
                    mask = torch.zeros_like(up)
                else:
                    mask = (up - up.min()) / (up.max() - up.min())
                values = []
                for i in range(samples):
                    with torch.no_grad():
                        logits = model(x[b:b + 1] * variant(mask, i))[0]
                    values.append(logits.softmax(0)[c] if weight == "class_prob" else logits[c])
                scores.append(sum(values) / samples)
            if weight == "class_prob":
                raw = sum(scores[k] * ups[k] for k in keep)
            else:
                increase = torch.stack([scores[k] - out[c] for k in keep])
                alpha = increase.softmax(0)
                raw = sum(a * acts[k] for a, k in zip(alpha, keep, strict=True))
            per_target.append(raw)
        raws.append(torch.stack(per_target))
    return torch.stack(raws)


def reference_ablation(model, layer, x, targets):
    raws = []
    for b in range(len(x)):
        acts, out = layer_output(model, layer, x[b])
        per_target = []
        for c in targets[b]:
            weights = []
            for k in range(acts.shape[0]):
                ablated = acts.clone()
                ablated[k] = 0
                s_k = layer_output(model, layer, x[b], replace=ablated)[1][c]
                weights.append((out[c] - s_k) / out[c])
            per_target.append(sum(w * acts[k] for k, w in enumerate(weights)))
        raws.append(torch.stack(per_target))
    return torch.stack(raws)


def numpy_projection(features: Tensor) -> Tensor:
    """pytorch-grad-cam's get_2d_projection for one (C, h, w) array."""
    a = features.numpy().astype(np.float64)
    o = a.reshape(a.shape[0], -1).T
    o = o - o.mean(axis=0)
    _, _, vt = np.linalg.svd(o, full_matrices=True)
    return torch.from_numpy((o @ vt[0]).reshape(a.shape[1:])).float()


def layer_gradient(model, layer, image, c):
    acts = layer_output(model, layer, image)[0].requires_grad_(True)
    handle = layer.register_forward_hook(lambda _m, _a, _o: acts[None])
    try:
        out = model(image[None])[0, c]
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(out, acts)
    return acts.detach(), grad


def reference_occlusion(model, x, targets, window, stride, fill):
    h, w = x.shape[-2:]

    def starts(length, win, step):
        s = list(range(0, length - win + 1, step))
        return s if s[-1] == length - win else [*s, length - win]

    raws = []
    for b in range(len(x)):
        with torch.no_grad():
            base = model(x[b:b + 1])[0]
        total = torch.zeros(len(targets[b]), h, w)
        count = torch.zeros(h, w)
        for y0 in starts(h, window[0], stride[0]):
            for x0 in starts(w, window[1], stride[1]):
                occluded = x[b].clone()
                occluded[:, y0:y0 + window[0], x0:x0 + window[1]] = fill
                with torch.no_grad():
                    out = model(occluded[None])[0]
                for j, c in enumerate(targets[b]):
                    total[j, y0:y0 + window[0], x0:x0 + window[1]] += base[c] - out[c]
                count[y0:y0 + window[0], x0:x0 + window[1]] += 1
        raws.append(total / count)
    return torch.stack(raws)


def assert_maps(expl, method, reference_raw, tol=TOL):
    """Raw maps within ``tol`` of the reference's scale, normalised maps within ``tol``."""
    raw = expl.raw[method]
    scale = float(reference_raw.abs().max())
    torch.testing.assert_close(raw, reference_raw, rtol=0, atol=tol * scale)
    size = tuple(expl[method].shape[-2:])
    expected = torch.stack([reference_post(r, size) for r in reference_raw])
    torch.testing.assert_close(expl[method], expected, rtol=0, atol=tol)


# --- Score-CAM family -----------------------------------------------------------------------


@pytest.mark.parametrize("weight", ["class_prob", "channel_softmax"])
def test_scorecam_matches_loop_reference(net, x, weight):
    expl = camkit.explain(net, x, TARGETS, "scorecam", "body", weight=weight)
    assert_maps(expl, "scorecam", reference_scorecam(net, net.body, x, TARGETS, weight))
    expected_shape = (2, 2, 8, 8) if weight == "class_prob" else (2, 2, 4, 4)
    assert expl.raw["scorecam"].shape == expected_shape


@pytest.mark.parametrize("weight", ["class_prob", "channel_softmax"])
def test_faster_scorecam_keeps_top_variance_channels(net, x, weight):
    expl = camkit.explain(net, x, TARGETS, "scorecam", "body", weight=weight, max_channels=3)
    reference = reference_scorecam(net, net.body, x, TARGETS, weight, max_channels=3)
    assert_maps(expl, "scorecam", reference)
    assert expl.details["scorecam"]["evaluations"] == 2 * 3


def test_sscam_matches_loop_reference(net, x):
    std, samples, seed = 0.3, 3, 7
    noise = std * torch.randn((samples, 8, 8), generator=torch.Generator().manual_seed(seed))
    expl = camkit.explain(net, x, TARGETS, "sscam", "body", seed=seed, num_samples=samples,
                          noise_std=std, weight="channel_softmax")
    reference = reference_scorecam(net, net.body, x, TARGETS, "channel_softmax",
                                   variant=lambda m, i: m + noise[i], samples=samples)
    assert_maps(expl, "sscam", reference)


def test_iscam_matches_loop_reference(net, x):
    expl = camkit.explain(net, x, TARGETS, "iscam", "body", num_samples=4)
    reference = reference_scorecam(net, net.body, x, TARGETS,
                                   variant=lambda m, i: m * (i + 1) / 4, samples=4)
    assert_maps(expl, "iscam", reference)


def test_bf16_scorecam_is_close_to_fp32_reference(net, x):
    expl = camkit.explain(net, x, TARGETS, "scorecam", "body", precision="bf16")
    assert_maps(expl, "scorecam", reference_scorecam(net, net.body, x, TARGETS), tol=BF16_TOL)


def test_empty_masks_are_evaluated_once_per_image(net, x):
    expl = camkit.explain(net, x, TARGETS, ["scorecam", "sscam"], "body", num_samples=2)
    # 6 channels of which 2 are constant: 4 informative + 1 shared empty mask per image
    assert expl.details["scorecam"]["evaluations"] == 2 * (4 + 1)
    assert expl.details["sscam"]["evaluations"] == 2 * (4 + 1) * 2
    assert expl.details["scorecam"]["empty_mask_images"] == 2
    # the reference evaluates every empty mask separately
    assert_maps(expl, "scorecam", reference_scorecam(net, net.body, x, TARGETS))


def test_channel_softmax_is_invariant_to_a_baseline_shift(net, x):
    scores = torch.randn(2, 3, 6)
    baseline = torch.randn(2, 3)
    selected = torch.rand(2, 6) > 0.3
    selected[:, 0] = True
    shifted = channel_softmax_weights(scores, baseline + torch.randn(2, 3) * 10, selected)
    torch.testing.assert_close(channel_softmax_weights(scores, baseline, selected), shifted)
    # a constant added to every logit of a class shifts s_c on every masked input alike
    before = camkit.explain(net, x, TARGETS, "scorecam", "body", weight="channel_softmax")
    with torch.no_grad():
        net.fc.bias += torch.tensor([5.0, -3.0, 2.0, 7.0, -1.0])
    after = camkit.explain(net, x, TARGETS, "scorecam", "body", weight="channel_softmax")
    torch.testing.assert_close(after.raw["scorecam"], before.raw["scorecam"])


def test_class_prob_needs_class_targets(net, x):
    with pytest.raises(ValueError, match="channel_softmax"):
        camkit.explain(net, x, lambda out: out[:, 0], "scorecam", "body")
    expl = camkit.explain(net, x, lambda out: out[:, 0], "scorecam", "body",
                          weight="channel_softmax")
    torch.testing.assert_close(
        expl.raw["scorecam"],
        camkit.explain(net, x, 0, "scorecam", "body", weight="channel_softmax").raw["scorecam"],
    )


@pytest.mark.parametrize("options, message", [
    ({"weight": "softmax"}, "weight must be"),
    ({"precision": "fp16"}, "precision must be"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_batch_memory": -1}, "max_batch_memory"),
    ({"max_channels": 0}, "max_channels"),
])
def test_invalid_options_are_refused(net, x, options, message):
    with pytest.raises(ValueError, match=message):
        camkit.explain(net, x, None, "scorecam", "body", **options)


# --- batching -------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [{"batch_size": 1}, {"batch_size": 3},
                                      {"max_batch_memory": 1}, {"max_batch_memory": 2**20}])
def test_batch_settings_do_not_change_any_map(net, x, settings):
    methods = PERTURBATION
    default = camkit.explain(net, x, TARGETS, methods, "body", **FAST)
    other = camkit.explain(net, x, TARGETS, methods, "body", **FAST, **settings)
    for m in methods:
        torch.testing.assert_close(other.raw[m], default.raw[m], rtol=1e-5, atol=1e-6)
    if settings.get("max_batch_memory") == 1:
        assert all(other.details[m]["batch_size"] == 1 for m in methods)


def test_each_image_is_explained_independently_of_the_batch(x):
    model = TwoInputs().eval()
    shift = torch.rand(2, 5, generator=torch.Generator().manual_seed(0)) * 0.1
    methods = PERTURBATION
    batch = camkit.explain(model, (x, shift), TARGETS, methods, "net.body", **FAST)
    for b in range(2):
        alone = camkit.explain(model, (x[b:b + 1], shift[b:b + 1]), [TARGETS[b]], methods,
                               "net.body", **FAST)
        for m in methods:
            torch.testing.assert_close(alone.raw[m][0], batch.raw[m][b], rtol=1e-5, atol=1e-6)


# --- Ablation-CAM ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", [True, False])
def test_ablationcam_matches_loop_reference(net, x, split):
    expl = camkit.explain(net, x, TARGETS, "ablationcam", "body", split=split)
    assert_maps(expl, "ablationcam", reference_ablation(net, net.body, x, TARGETS))
    assert expl.details["ablationcam"]["path"] == ("split" if split else "full-forward")
    assert expl.details["ablationcam"]["evaluations"] == 2 * 5  # the dead channel is skipped


@pytest.mark.parametrize("model_class, layer, targets", [(ResidualNet, "body", TARGETS),
                                                          (ReadsBatchSize, "body", TARGETS),
                                                          (TinyCNN, "features", [[0, 1], [2, 0]])])
def test_ablation_split_path_equals_full_forward_path(x, model_class, layer, targets):
    torch.manual_seed(0)
    model = model_class().eval()
    split = camkit.explain(model, x, targets, "ablationcam", layer)
    full = camkit.explain(model, x, targets, "ablationcam", layer, split=False)
    assert split.details["ablationcam"]["path"] == "split"
    assert full.details["ablationcam"]["path"] == "full-forward"
    torch.testing.assert_close(split.raw["ablationcam"], full.raw["ablationcam"])


@pytest.mark.parametrize("model_class, reason", [(Untraceable, "cannot trace"),
                                                 (ConstantFromInput, "not per image")])
def test_ablation_falls_back_when_the_split_is_unusable(x, model_class, reason):
    torch.manual_seed(0)
    model = model_class().eval()
    expl = camkit.explain(model, x, TARGETS, "ablationcam", "body")
    note = expl.details["ablationcam"]
    assert note["path"] == "full-forward" and reason in note["reason"]
    assert_maps(expl, "ablationcam", reference_ablation(model, model.body, x, TARGETS))


@pytest.mark.filterwarnings("ignore:.*constant")
def test_ablation_warns_when_the_score_is_not_positive(net, x):
    scores = net(x).detach()
    negative = scores.argmin(dim=1)
    assert (scores.gather(1, negative[:, None]) < 0).all()
    with pytest.warns(RuntimeWarning, match="<= 0"):
        camkit.explain(net, x, negative, "ablationcam", "body")


# --- Eigen-CAM and EigenGrad-CAM ------------------------------------------------------------


def _same_up_to_sign(got: Tensor, expected: Tensor) -> None:
    sign = torch.sign((got * expected).sum())
    torch.testing.assert_close(got * sign, expected, rtol=0, atol=TOL * expected.abs().max())


def test_eigencam_matches_numpy_svd(net, x):
    expl = camkit.explain(net, x, TARGETS, "eigencam", "body")
    for b in range(2):
        acts = layer_output(net, net.body, x[b])[0]
        expected = numpy_projection(acts)
        for j in range(2):  # class-agnostic: one map for every target
            _same_up_to_sign(expl.raw["eigencam"][b, j], expected)


def test_eigengradcam_matches_numpy_svd_of_gradient_times_activation(net, x):
    expl = camkit.explain(net, x, TARGETS, "eigengradcam", "body")
    for b in range(2):
        for j, c in enumerate(TARGETS[b]):
            acts, grad = layer_gradient(net, net.body, x[b], c)
            _same_up_to_sign(expl.raw["eigengradcam"][b, j], numpy_projection(grad * acts))


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_sign_correction_only_flips_the_sign(method):
    torch.manual_seed(4)
    model = TinyCNN(channels=8).eval()
    images = torch.randn(6, 3, 8, 8)
    plain = camkit.explain(model, images, None, method, "features").raw[method]
    fixed = camkit.explain(model, images, None, method, "features",
                           sign_correction=True).raw[method]
    flipped = torch.zeros(6, dtype=torch.bool)
    for b in range(6):
        same, opposite = torch.equal(fixed[b], plain[b]), torch.equal(fixed[b], -plain[b])
        assert same or opposite
        flipped[b] = opposite and not same
        assert fixed[b].max().abs() >= fixed[b].min().abs()
    assert flipped.any() or (plain.flatten(1).amax(1) >= plain.flatten(1).amin(1).abs()).all()


@pytest.mark.parametrize("positions, channels", [(12, 40), (40, 12)])
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_eigen_projection_is_the_svd_projection_through_either_gram_matrix(positions, channels,
                                                                            offset):
    """Both Gram routes (``O Oᵀ`` when P ≤ C, ``Oᵀ O`` otherwise) against a float64 SVD, and
    the sign: positive correlation with the summed centred activation. With channel means far
    larger than their spread (``offset``) too: the columns are centred before any product."""
    torch.manual_seed(5)
    features = torch.relu(torch.randn(4, positions, channels)) * torch.rand(4, positions, 1)
    features = features + offset * torch.rand(4, 1, channels)
    got = principal_projection(features).double()
    centred = features.double() - features.double().mean(dim=1, keepdim=True)
    first = torch.linalg.svd(centred, full_matrices=False).Vh[:, 0]
    for n in range(4):
        expected = centred[n] @ first[n]
        expected = expected * torch.sign(expected @ centred[n].sum(dim=1))
        torch.testing.assert_close(got[n], expected, rtol=0, atol=1e-5 * expected.abs().max())


@pytest.mark.parametrize("positions, channels", [(10, 4), (4, 10)])
def test_eigen_projection_is_nan_safe(positions, channels):
    features = torch.randn(3, positions, channels)
    broken = features.clone()
    broken[0, 2, 1] = float("nan")
    broken[1, 0, 0] = float("inf")
    got = principal_projection(broken)
    assert torch.isfinite(got).all()
    cleaned = broken.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    torch.testing.assert_close(got, principal_projection(cleaned))
    torch.testing.assert_close(principal_projection(features)[2], got[2])


# --- occlusion ------------------------------------------------------------------------------


@pytest.mark.parametrize("window, stride, fill",
                         [(3, 2, 0.0), ((4, 3), (3, 2), 0.5), ((8, 2), 1, 0)])
def test_occlusion_matches_loop_reference(net, x, window, stride, fill):
    expl = camkit.explain(net, x, TARGETS, "occlusion", "body", window=window, stride=stride,
                          fill=fill)
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    reference = reference_occlusion(net, x, TARGETS, pair(window), pair(stride), fill)
    assert_maps(expl, "occlusion", reference)


# --- together, classes, the borrowed model --------------------------------------------------


def test_with_gradient_methods_in_one_call(net, x):
    methods = ["gradcam", *ALL, "gradcam++"]
    together = camkit.explain(net, x, TARGETS, methods, "body", **FAST)
    assert list(together) == methods
    for m in methods:
        options = {k: v for k, v in FAST.items()
                   if k in camkit.methods.get_method(m).options}
        alone = camkit.explain(net, x, TARGETS, m, "body", **options)
        torch.testing.assert_close(together.raw[m], alone.raw[m])


def test_method_classes(net, x):
    for cls, method in [(camkit.ScoreCAM, "scorecam"), (camkit.SSCAM, "sscam"),
                        (camkit.ISCAM, "iscam"), (camkit.AblationCAM, "ablationcam"),
                        (camkit.EigenCAM, "eigencam"), (camkit.EigenGradCAM, "eigengradcam"),
                        (camkit.Occlusion, "occlusion")]:
        options = {k: v for k, v in FAST.items()
                   if k in camkit.methods.get_method(method).options}
        maps = cls(net, layer="body", **options)(x, targets=0)
        assert maps.shape == (2, 1, 8, 8) and method in camkit.available_methods()


def model_state(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [(p.detach().clone(), p.stride(), p.data_ptr()) for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [len(d) for m in model.modules()
                  for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks,
                            m._backward_pre_hooks)],
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = model_state(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"])
    assert not any(after["hooks"])
    for (p, stride, ptr), (q, stride_q, ptr_q) in zip(after["params"], before["params"],
                                                      strict=True):
        assert torch.equal(p, q) and stride == stride_q and ptr == ptr_q
    assert all(torch.equal(a, b) for a, b in zip(after["buffers"], before["buffers"],
                                                 strict=True))
    assert not nn.modules.module._global_forward_hooks


@pytest.mark.parametrize("method", ALL)
def test_model_is_untouched(net, x, method):
    net.train()
    net.fc.weight.requires_grad_(False)
    net.mix.to(memory_format=torch.channels_last)
    before = model_state(net)
    camkit.explain(net, x, TARGETS, method, "body", **{
        k: v for k, v in {**FAST, "precision": "bf16"}.items()
        if k in camkit.methods.get_method(method).options})
    assert_untouched(net, before)


@pytest.mark.parametrize("method", ALL)
def test_model_is_untouched_when_the_method_raises(x, method):
    torch.manual_seed(0)
    net = ResidualNet()
    net.mix = nn.Sequential(net.mix, Bomb(limit=2))  # raises in every perturbation pass
    net.train()
    before = model_state(net)
    bad = {"sign_correction": "yes"} if method.startswith("eigen") else {"batch_size": 3}
    options = {k: v for k, v in FAST.items() if k in camkit.methods.get_method(method).options}
    with pytest.raises((RuntimeError, TypeError)):
        camkit.explain(net, x, TARGETS, method, "body", **options, **bad)
    assert_untouched(net, before)


def test_progress_goes_to_stderr_only(net, x, capsys):
    camkit.explain(net, x, TARGETS, PERTURBATION, "body", progress=True, **FAST)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert all(m in captured.err for m in ["scorecam", "ablationcam", "occlusion"])
    camkit.explain(net, x, TARGETS, PERTURBATION, "body", progress=False, **FAST)
    camkit.explain(net, x, TARGETS, PERTURBATION, "body", **FAST)  # fast: auto stays silent
    assert capsys.readouterr() == ("", "")
