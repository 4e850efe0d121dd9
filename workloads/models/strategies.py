"""Fine-tuning strategies for BERT-style encoders (S3): what to freeze, what to keep, what to prune.

Each function changes the model in place and returns a small dict of what it actually did
(layers frozen, layers kept, heads pruned per layer), which the trial logs. Layer counts in
the study are written for 12-layer models; `scale_layers` maps them to the model's depth.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers.pytorch_utils import prune_linear_layer

from ..core.seeding import derive_seed

REFERENCE_DEPTH = 12  # the studies' layer counts refer to a 12-layer BERT


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a BERT/RoBERTa-style model (with or without a task head)."""
    base = getattr(model, "base_model", model)
    try:
        return base.encoder.layer
    except AttributeError as e:
        raise TypeError(f"{type(model).__name__} has no encoder.layer list; not a BERT-style encoder") from e


def scale_layers(k: int, depth: int, reference_depth: int = REFERENCE_DEPTH) -> int:
    """k layers of a reference_depth model, as the same fraction of a depth-layer model
    (rounded half up: 9 of 12 → 5 of 6), kept within [1, depth]."""
    if depth == reference_depth:
        return k
    return max(1, min(depth, int(k * depth / reference_depth + 0.5)))


def freeze_first_layers(model: torch.nn.Module, k: int) -> dict:
    """Freeze encoder layers 0..k-1 (Lee et al. 2019). Embeddings, later layers, pooler and
    head stay trainable."""
    layers = encoder_layers(model)
    if not 0 <= k <= len(layers):
        raise ValueError(f"cannot freeze {k} of {len(layers)} layers")
    for layer in layers[:k]:
        layer.requires_grad_(False)
    return {"layers_frozen": k, "layers_total": len(layers)}


def freeze_all_but_last_and_embeddings(model: torch.nn.Module) -> dict:
    """Freeze the whole encoder (pooler included) except the embeddings and the last layer;
    the task head stays trainable."""
    base = getattr(model, "base_model", model)
    layers = encoder_layers(model)
    base.requires_grad_(False)
    base.embeddings.requires_grad_(True)
    layers[-1].requires_grad_(True)
    return {"layers_frozen": len(layers) - 1, "layers_total": len(layers), "embeddings_trainable": True}


def keep_first_layers(model: torch.nn.Module, k: int) -> dict:
    """Delete every encoder layer after the first k; the model is then genuinely k layers deep."""
    base = getattr(model, "base_model", model)
    layers = encoder_layers(model)
    if not 1 <= k <= len(layers):
        raise ValueError(f"cannot keep {k} of {len(layers)} layers")
    base.encoder.layer = torch.nn.ModuleList(list(layers)[:k])
    model.config.num_hidden_layers = k
    return {"layers_kept": k, "layers_before": len(layers)}


def prune_attention_heads(attention: torch.nn.Module, heads: list[int]) -> None:
    """Remove `heads` from one attention block, structurally: keep the rows of query/key/value
    and the input columns of the output projection that belong to the kept heads, and set
    the block's head count (the forward pass infers heads from the projection width)."""
    self_attn = attention.self
    n_heads, d = self_attn.num_attention_heads, self_attn.attention_head_size
    keep = [h for h in range(n_heads) if h not in set(heads)]
    if not keep:
        raise ValueError("cannot prune every head of a layer")
    index = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
    self_attn.query = prune_linear_layer(self_attn.query, index, dim=0)
    self_attn.key = prune_linear_layer(self_attn.key, index, dim=0)
    self_attn.value = prune_linear_layer(self_attn.value, index, dim=0)
    attention.output.dense = prune_linear_layer(attention.output.dense, index, dim=1)
    self_attn.num_attention_heads = len(keep)
    self_attn.all_head_size = len(keep) * d


def choose_heads_to_prune(n_layers: int, n_heads: int, fraction: float, seed: int) -> dict[int, list[int]]:
    """round(fraction × heads) heads per layer, drawn at random, independently per layer,
    from a seed: the same seed gives the same heads on any machine."""
    if not 0 <= fraction < 1:
        raise ValueError(f"prune fraction must be in [0, 1), got {fraction}")
    n_prune = min(n_heads - 1, int(fraction * n_heads + 0.5))
    chosen = {}
    for i in range(n_layers):
        rng = np.random.default_rng(derive_seed(seed, "prune_heads", i))
        chosen[i] = sorted(int(h) for h in rng.choice(n_heads, size=n_prune, replace=False))
    return chosen


def prune_heads_random(model: torch.nn.Module, fraction: float, seed: int) -> dict:
    """Michel et al. 2019: prune `fraction` of the heads of every layer at random."""
    layers = encoder_layers(model)
    n_heads = layers[0].attention.self.num_attention_heads
    chosen = choose_heads_to_prune(len(layers), n_heads, fraction, seed)
    for i, heads in chosen.items():
        if heads:
            prune_attention_heads(layers[i].attention, heads)
    return {"heads_pruned": chosen, "heads_per_layer_before": n_heads,
            "heads_per_layer_after": n_heads - len(chosen[0]), "prune_seed": seed}


def head_pruning_param_drop(hidden: int, head_dim: int, pruned_per_layer: list[int]) -> int:
    """Parameters removed by pruning p heads of one layer: q, k, v lose p·d rows (weights and
    bias) and the output projection loses p·d input columns (its bias is unchanged)."""
    return sum(4 * p * head_dim * hidden + 3 * p * head_dim for p in pruned_per_layer)


STRATEGIES = ("full", "freeze_first", "freeze_all_but_last", "keep_first", "prune_heads")


def apply_strategy(model: torch.nn.Module, strategy: str, *, layers: int = 9, prune_fraction: float = 0.5,
                   seed: int = 0) -> dict:
    """Apply one S3 strategy by name. `layers` is the study's count for a 12-layer model and
    is scaled to this model's depth; the numbers actually used are returned."""
    depth = len(encoder_layers(model))
    k = scale_layers(layers, depth)
    if strategy == "full":
        return {"strategy": strategy}
    if strategy == "freeze_first":
        return {"strategy": strategy, **freeze_first_layers(model, k)}
    if strategy == "freeze_all_but_last":
        return {"strategy": strategy, **freeze_all_but_last_and_embeddings(model)}
    if strategy == "keep_first":
        return {"strategy": strategy, **keep_first_layers(model, k)}
    if strategy == "prune_heads":
        return {"strategy": strategy, **prune_heads_random(model, prune_fraction, seed)}
    raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
