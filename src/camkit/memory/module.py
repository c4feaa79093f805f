"""The bias-reducing key-value memory of M-CAM (Kim & Ro, BMVC 2021; ALGORITHMS §1.1-§1.2).

Shapes: ``B`` images, ``N`` slots, ``c`` channels of the target layer, ``(h, w)`` its spatial
size, ``n_cls`` classes. The memory holds

- ``spatial``: S, the spatial feature representation dictionary, ``(N, c, h, w)`` (OP-2);
- ``keys``: K, the key memory, ``(N, c)``;
- ``values``: V, the value memory, ``(N, c)``;
- ``encoder``: G, the semantic information encoder ``Linear(n_cls, c) → ReLU → Linear(c, c)``
  (§1.1 [P]), used only in training;
- ``fc``: the classifier on ``cat([v, q])``, ``2c → n_cls`` (OP-7).

Slot ``n`` of S, K and V is aligned by the address loss (§1.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..artifacts import check_format, check_tensors, read_safetensors, write_safetensors

FORMAT = "camkit.memory"
FORMAT_VERSION = 1
KIND = "M-CAM memory"
COS_EPS = 1e-8  # ε of cos(a, b) = a·b / (‖a‖ ‖b‖ + ε), §1.2 [P]
VALUE_INIT_STD = 0.02  # V ~ N(0, 0.02²), §1.7 [P]


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``cos(a_i, b_n) = a_i·b_n / (‖a_i‖ ‖b_n‖ + ε)`` (§1.2): ``(B, d)``, ``(N, d)`` →
    ``(B, N)``."""
    return (a @ b.T) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1) + COS_EPS)


def address_logits(queries: Tensor, slots: Tensor, temperature: float) -> Tensor:
    """Logits of the address softmax, ``cos(query, slot_n) / T`` (eq. 1; T = 1 in the paper,
    OP-10): ``(B, d)``, ``(N, d)`` → ``(B, N)``. ``softmax`` over ``N`` gives p, p' or p_s."""
    return cosine_matrix(queries, slots) / temperature


def read(address: Tensor, values: Tensor) -> Tensor:
    """Value reading ``v = p V`` (§1.2): ``(B, N)``, ``(N, c)`` → ``(B, c)``."""
    return address @ values


class TrainingAddresses(NamedTuple):
    """What one training step of §1.3 needs, for a batch of ``B`` images.

    ``key_logits``, ``value_logits``, ``spatial_logits`` are the address logits ``(B, N)`` of
    p (query vs K), p' (G(y) vs V) and p_s (vec f vs vec S); ``v = pV`` and ``v_t = p'V`` are
    ``(B, c)``; ``scores_v = fc(cat(v, q))`` and ``scores_vt = fc(cat(v_t, q))`` are
    ``(B, n_cls)`` logits."""

    key_logits: Tensor
    value_logits: Tensor
    spatial_logits: Tensor
    v: Tensor
    v_t: Tensor
    scores_v: Tensor
    scores_vt: Tensor


class BiasReducingMemory(nn.Module):
    """M-CAM's key-value memory with its spatial dictionary, encoder and classifier.

    Args:
        channels: ``c``, the target layer's channel count.
        spatial_size: ``(h, w)`` of the target layer's output at the training input size.
        num_classes: ``n_cls``.
        slots: ``N``; default ``2 · n_cls`` (§1.7 [P]).
        addr_temperature: ``T`` of every address softmax; 1 is the paper's (OP-10).
        layer: the name of the layer the memory is trained on (recorded, used in messages).
        input_size: ``(H, W)`` of the images that give ``spatial_size`` (recorded).
        class_names: one name per class (recorded); default ``"0"``, ``"1"``, ...

    Initialisation (§1.7 [P]): ``K, S ~ N(0, 1)`` (the scale is irrelevant under cosine),
    ``V ~ N(0, 0.02²)``, ``fc`` and ``G`` PyTorch defaults; all from the global RNG, so seed
    it (or use ``torch.random.fork_rng``) for a reproducible memory.

    ``train_settings`` and ``metrics`` are plain dicts filled by training and saved with
    the memory.
    """

    def __init__(
        self,
        channels: int,
        spatial_size: tuple[int, int],
        num_classes: int,
        slots: int | None = None,
        addr_temperature: float = 1.0,
        *,
        layer: str | None = None,
        input_size: tuple[int, int] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        slots = 2 * num_classes if slots is None else slots
        h, w = spatial_size
        for name, value in {"channels": channels, "num_classes": num_classes, "slots": slots,
                            "spatial height": h, "spatial width": w}.items():
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not addr_temperature > 0:
            raise ValueError(f"addr_temperature must be > 0, got {addr_temperature!r}")
        names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names given for {num_classes} classes")
        self.spatial = nn.Parameter(torch.randn(slots, channels, h, w))
        self.keys = nn.Parameter(torch.randn(slots, channels))
        self.values = nn.Parameter(torch.randn(slots, channels) * VALUE_INIT_STD)
        self.encoder = nn.Sequential(
            nn.Linear(num_classes, channels), nn.ReLU(), nn.Linear(channels, channels)
        )
        self.fc = nn.Linear(2 * channels, num_classes)
        self.addr_temperature = float(addr_temperature)
        self.layer = layer
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.class_names = names
        self.train_settings: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}

    @property
    def num_slots(self) -> int:
        """``N``."""
        return self.keys.shape[0]

    @property
    def channels(self) -> int:
        """``c``."""
        return self.keys.shape[1]

    @property
    def spatial_size(self) -> tuple[int, int]:
        """``(h, w)`` of the features the memory was trained on."""
        return (self.spatial.shape[2], self.spatial.shape[3])

    @property
    def num_classes(self) -> int:
        """``n_cls``."""
        return self.fc.out_features

    @staticmethod
    def pool(features: Tensor) -> Tensor:
        """The query ``q = AvgPool(f)`` (§1.1): ``(B, c, h, w)`` → ``(B, c)``."""
        return features.mean(dim=(2, 3))

    def key_address_logits(self, queries: Tensor) -> Tensor:
        """Logits of p: ``cos(q, K_n) / T`` (eq. 1), ``(B, c)`` → ``(B, N)``."""
        return address_logits(queries, self.keys, self.addr_temperature)

    def value_address_logits(self, labels: Tensor) -> Tensor:
        """Logits of p': ``cos(G(y), V_n) / T`` (§1.2), multi-hot ``(B, n_cls)`` → ``(B, N)``."""
        return address_logits(self.encoder(labels), self.values, self.addr_temperature)

    def spatial_address_logits(self, features: Tensor) -> Tensor:
        """Logits of p_s: ``cos(vec f, vec S_n) / T`` (§1.2, OP-2), ``(B, c, h, w)`` →
        ``(B, N)``."""
        return address_logits(features.flatten(1), self.spatial.flatten(1), self.addr_temperature)

    def classify(self, v: Tensor, queries: Tensor) -> Tensor:
        """``z = fc(cat([v, q]))`` (§1.1, OP-7): ``(B, c)``, ``(B, c)`` → ``(B, n_cls)`` logits."""
        return self.fc(torch.cat([v, queries], dim=1))

    def classify_queries(self, queries: Tensor) -> Tensor:
        """Inference from queries: ``p = softmax(cos(q, K)/T)``, ``v = pV``, ``z = fc(cat(v, q))``
        (§1.1), ``(B, c)`` → ``(B, n_cls)`` logits. Uses neither y, G nor S."""
        p = self.key_address_logits(queries).softmax(dim=1)
        return self.classify(read(p, self.values), queries)

    def forward(self, features: Tensor) -> Tensor:
        """The memory head's class logits for target-layer features ``(B, c, h, w)`` →
        ``(B, n_cls)``."""
        self.check_features(features)
        return self.classify_queries(self.pool(features))

    def training_addresses(self, features: Tensor, labels: Tensor) -> TrainingAddresses:
        """Everything the losses of §1.3 need, for features ``(B, c, h, w)`` and multi-hot
        labels ``(B, n_cls)`` (the pseudo-code of §1.3)."""
        queries = self.pool(features)
        key_logits = self.key_address_logits(queries)
        value_logits = self.value_address_logits(labels)
        v = read(key_logits.softmax(dim=1), self.values)
        v_t = read(value_logits.softmax(dim=1), self.values)
        return TrainingAddresses(
            key_logits=key_logits,
            value_logits=value_logits,
            spatial_logits=self.spatial_address_logits(features),
            v=v,
            v_t=v_t,
            scores_v=self.classify(v, queries),
            scores_vt=self.classify(v_t, queries),
        )

    def check_features(self, features: Tensor) -> None:
        """Refuse features whose ``(c, h, w)`` is not the one the memory was trained for."""
        expected = (self.channels, *self.spatial_size)
        if features.dim() == 4 and tuple(features.shape[1:]) == expected:
            return
        where = f"layer {self.layer!r}" if self.layer else "its layer"
        size = f"{self.input_size[0]}×{self.input_size[1]}" if self.input_size else None
        raise ValueError(
            f"this M-CAM memory was trained on {where} with features of shape (c, h, w) = "
            f"{expected}{f' (input size {size})' if size else ''}, but the activations have "
            f"shape {tuple(features.shape)}. Explain that layer of the same network "
            f"{f'with {size} images' if size else 'at the training input size'}, or train a "
            "memory for this layer and input size"
        )

    def config(self) -> dict[str, Any]:
        """The JSON-serialisable description saved with the tensors (see :mod:`.io`)."""
        return {
            "layer": self.layer,
            "channels": self.channels,
            "spatial_size": list(self.spatial_size),
            "input_size": None if self.input_size is None else list(self.input_size),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "slots": self.num_slots,
            "addr_temperature": self.addr_temperature,
            "train_settings": self.train_settings,
            "metrics": self.metrics,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BiasReducingMemory:
        """A freshly initialised memory described by :meth:`config`'s output."""
        memory = cls(
            int(config["channels"]), tuple(config["spatial_size"]), int(config["num_classes"]),
            int(config["slots"]), float(config["addr_temperature"]), layer=config["layer"],
            input_size=config["input_size"], class_names=config["class_names"],
        )
        memory.train_settings = dict(config.get("train_settings") or {})
        memory.metrics = dict(config.get("metrics") or {})
        return memory

    def save(self, path: str | Path) -> Path:
        """Write the memory to ``path`` (see :func:`save_memory`)."""
        return save_memory(self, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> BiasReducingMemory:
        """Read a memory written by :meth:`save` (see :func:`load_memory`)."""
        return load_memory(path, map_location)

    def extra_repr(self) -> str:
        return (f"slots={self.num_slots}, channels={self.channels}, "
                f"spatial_size={self.spatial_size}, num_classes={self.num_classes}, "
                f"addr_temperature={self.addr_temperature}, layer={self.layer!r}")


def save_memory(memory: BiasReducingMemory, path: str | Path) -> Path:
    """Write ``memory`` to ``path`` as a :mod:`camkit.artifacts` file: its ``state_dict``
    (float32) and the config ``{"format": "camkit.memory", "format_version": 1, "layer",
    "channels", "spatial_size", "input_size", "num_classes", "class_names", "slots",
    "addr_temperature", "train_settings", "metrics"}``."""
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **memory.config()}
    return write_safetensors(memory.state_dict(), header, path)


def read_config(path: str | Path) -> dict[str, Any]:
    """The JSON config of a saved memory, validated, without loading its tensors."""
    _, header = read_safetensors(path, KIND, tensors=False)
    check_format(header, FORMAT, FORMAT_VERSION, path, KIND)
    return header


def load_memory(path: str | Path, map_location: str | torch.device = "cpu") -> BiasReducingMemory:
    """Read a memory written by :func:`save_memory`: checks the format version, the tensor
    names, shapes and values against the config; never unpickles; leaves the global RNG
    untouched."""
    tensors, header = read_safetensors(path, KIND, map_location)
    check_format(header, FORMAT, FORMAT_VERSION, path, KIND)
    try:
        with torch.device("meta"):
            memory = BiasReducingMemory.from_config(header)
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, RuntimeError) as err:
        raise ValueError(f"{path}: invalid memory config ({err!r})") from err
    expected = {k: (tuple(v.shape), torch.float32) for k, v in memory.state_dict().items()}
    check_tensors(tensors, expected, path, KIND)
    memory.load_state_dict(tensors, assign=True)
    return memory.eval()
