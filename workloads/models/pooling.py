"""How to turn a speech encoder's frames into one vector: small modules picked by name.

Every pooling takes the encoder's hidden states of every layer, `states` (B, L, T, D) with
L = layers + 1 (the embedding output first, the last layer's last), and a frame mask
(B, T) that is 1 on real frames, and returns (B, out_dim). Selecting layers is part of the
pooling (s3prl's featurizer), so a "layer k" arm and the SUPERB weighted sum are one-line
entries like the rest.

    masked_mean      mean of the last layer's real frames
    masked_max       element-wise max of the last layer's real frames
    mean_std         mean and standard deviation (statistics pooling), 2·D wide
    attention        a learned score per frame, softmax over real frames, weighted mean
    first_frame      the last layer's first frame (as a [CLS] would be used)
    weighted_layers  a learned softmax weight per layer, the weighted sum, then masked mean (SUPERB)
    layer_mean       one hidden layer k (`layer`, searched), masked mean
    layers_mean      every hidden layer's masked mean, concatenated
    layers_mean_std  every hidden layer's mean and standard deviation, concatenated
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

POOLINGS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(cls):
        POOLINGS[name] = cls
        cls.pooling_name = name
        return cls
    return wrap


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, T, D), mask (B, T) → (B, D): the mean over real frames only."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_std(x: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    var = (((x - mean.unsqueeze(1)) ** 2) * m).sum(1) / m.sum(1).clamp_min(1.0)
    return (var + 1e-6).sqrt()


class Pooling(nn.Module):
    """Base: which layer a pooling reads (`layer`, default the last) and its output width."""

    def __init__(self, dim: int, n_layers: int, layer: int = -1):
        super().__init__()
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"layer {layer} does not exist: the encoder has hidden states 0..{n_layers - 1}")
        self.dim, self.n_layers, self.layer = dim, n_layers, layer
        self.out_dim = dim

    one_layer = True  # reads only hidden state `layer` (the poolings over every layer say False)

    def pick(self, states: torch.Tensor) -> torch.Tensor:
        """The layer this pooling reads, in float32 (cached states may be float16: convert one
        layer, not all of them)."""
        return states[:, self.layer].float()


@register("masked_mean")
class MaskedMean(Pooling):
    def forward(self, states, mask):
        return masked_mean(self.pick(states), mask)


@register("layer_mean")
class LayerMean(MaskedMean):
    """One hidden layer k, mean-pooled: multilingual SER benchmarks found middle layers beat the last."""


@register("masked_max")
class MaskedMax(Pooling):
    def forward(self, states, mask):
        x = self.pick(states)
        x = x.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(x.dtype).min)
        return x.max(1).values


@register("mean_std")
class MeanStd(Pooling):
    def __init__(self, dim, n_layers, layer=-1):
        super().__init__(dim, n_layers, layer)
        self.out_dim = 2 * dim

    def forward(self, states, mask):
        x = self.pick(states)
        mean = masked_mean(x, mask)
        return torch.cat([mean, masked_std(x, mask, mean)], dim=-1)


@register("attention")
class AttentionPool(Pooling):
    def __init__(self, dim, n_layers, layer=-1):
        super().__init__(dim, n_layers, layer)
        self.score = nn.Linear(dim, 1)

    def forward(self, states, mask):
        x = self.pick(states)
        scores = self.score(x).squeeze(-1).masked_fill(~mask.bool(), torch.finfo(x.dtype).min)
        weights = scores.softmax(dim=1).unsqueeze(-1)
        return (weights * x).sum(1)


@register("first_frame")
class FirstFrame(Pooling):
    def forward(self, states, mask):
        return self.pick(states)[:, 0]


@register("weighted_layers")
class WeightedLayers(Pooling):
    """SUPERB's featurizer: softmax(w) · layers, then masked mean. Starts uniform."""

    one_layer = False

    def __init__(self, dim, n_layers, layer=-1):
        super().__init__(dim, n_layers, layer)
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))

    def forward(self, states, mask):
        w = self.layer_logits.softmax(0)
        return masked_mean(torch.einsum("l,bltd->btd", w, states.float()), mask)


@register("layers_mean")
class LayersMean(Pooling):
    """Every hidden layer mean-pooled, concatenated (L·D): the probe's features, learned on."""

    one_layer = False

    def __init__(self, dim, n_layers, layer=-1):
        super().__init__(dim, n_layers, layer)
        self.out_dim = n_layers * dim

    def forward(self, states, mask):
        b, layers, t, d = states.shape
        return masked_mean(states.float().permute(0, 2, 1, 3).reshape(b, t, layers * d), mask)


@register("layers_mean_std")
class LayersMeanStd(Pooling):
    """Every hidden layer's mean and standard deviation, concatenated (2·L·D)."""

    one_layer = False

    def __init__(self, dim, n_layers, layer=-1):
        super().__init__(dim, n_layers, layer)
        self.out_dim = 2 * n_layers * dim

    def forward(self, states, mask):
        b, layers, t, d = states.shape
        x = states.float().permute(0, 2, 1, 3).reshape(b, t, layers * d)
        mean = masked_mean(x, mask)
        return torch.cat([mean, masked_std(x, mask, mean)], dim=-1)


def build_pooling(name: str, dim: int, n_layers: int, layer: int = -1) -> Pooling:
    if name not in POOLINGS:
        raise ValueError(f"unknown pooling {name!r}; choose from {', '.join(POOLINGS)}")
    return POOLINGS[name](dim, n_layers, layer)


class PooledClassifier(nn.Module):
    """Pooling → LayerNorm → Linear(width) → GELU → dropout → Linear(classes): the trainable
    part of a frozen-encoder trial."""

    def __init__(self, pooling: Pooling, n_classes: int, width: int = 256, dropout: float = 0.1):
        super().__init__()
        self.pooling = pooling
        self.head = nn.Sequential(nn.LayerNorm(pooling.out_dim), nn.Linear(pooling.out_dim, width), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(width, n_classes))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooling(states, mask))
