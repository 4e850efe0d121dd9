"""A text encoder as the fusion study uses it: transcripts in, every layer's token states and
a token mask out, and the top k layers runnable on their own from a cached state.

Any BERT-family encoder loads (RoBERTa, BERT, MiniLM, e5) through AutoModel with
safetensors weights. `hidden_states(texts)` returns (B, L + 1, T, D), exactly the model's own
`output_hidden_states`; `run_text_layers(layers[j:], h, mask)` runs layers j… from the state
that enters layer j, with the same key-padding mask, so a cache of that state plus the top
layers reproduces the live model (prefix caching; tests/test_fusion.py checks it).
"""
from __future__ import annotations

import os

import torch


class TextEncoder:
    def __init__(self, path: str, max_length: int = 128, device: str | torch.device = "cpu", precision: str = "fp32"):
        from transformers import AutoModel

        from .encoders import load_tokenizer
        from .speech import check_precision

        local = os.path.isdir(path)
        self.path, self.max_length, self.device = path, int(max_length), torch.device(device)
        self.precision = check_precision(precision)
        self.tokenizer = load_tokenizer(path)
        self.model = AutoModel.from_pretrained(path, local_files_only=local, use_safetensors=True,
                                               trust_remote_code=False)
        self.model.to(self.device).eval()
        encoder = getattr(self.model, "encoder", None)
        if not hasattr(encoder, "layer"):
            raise ValueError(f"{path}: a {type(self.model).__name__} has no encoder.layer list; the fusion study "
                             "takes BERT-family text encoders (BERT, RoBERTa, MiniLM, e5)")
        self.layers = encoder.layer
        self.n_states = len(self.layers) + 1
        self.dim = self.model.config.hidden_size

    def tokens(self, texts: list[str], device: torch.device | None = None) -> dict:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(device or self.device)

    def hidden_states(self, texts: list[str], grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (B, L + 1, T, D), mask (B, T)), T the longest transcript's tokens (≤ max_length)."""
        batch = self.tokens(texts)
        with torch.set_grad_enabled(grad):
            out = self.model(**batch, output_hidden_states=True)
        return torch.stack(out.hidden_states, dim=1), batch["attention_mask"].bool()

    def cache_states(self, texts: list[str], prefix_layer: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[int]]:
        """What the text cache stores for a batch: the state entering `prefix_layer`, (B, T, D)
        with T the longest transcript's tokens, cast to `dtype` on the device, in the encoder's
        precision; with each transcript's token count. Nothing waits for the device."""
        from .speech import autocast

        host = self.tokens(texts, torch.device("cpu"))
        lengths = host["attention_mask"].sum(1).tolist()  # counted on the host: nothing waits for the device
        batch = host.to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self.model(**batch, output_hidden_states=True)
        return out.hidden_states[prefix_layer].to(dtype), lengths


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) bool, True at real tokens → (B, 1, 1, T) added to attention scores."""
    return (~mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


def run_text_layers(layers, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run encoder `layers` from `h`, the state that enters the first of them, attending only to
    the real tokens; returns the last layer's output."""
    extended = additive_mask(mask, h.dtype)
    for layer in layers:
        out = layer(h, attention_mask=extended)
        h = out[0] if isinstance(out, tuple) else out
    return h
