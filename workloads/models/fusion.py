"""Text + audio fusion heads (S1) and the model a fusion trial trains.

Each branch is the report's: the text encoder's first-token vector and the audio encoder's
masked mean over frames, each → Linear → LayerNorm (`width`, 256 in the report). Then one of
the fusion operators:

    concat           the report's late fusion: [t; a] → MLP
    gated            a learned gate per feature: g = σ(W[t; a]), g·t + (1 − g)·a → MLP
    cross_attention  text tokens attend to audio frames (multi-head, key-padding mask); the
                     first token's attended state (with a residual and LayerNorm) next to a → MLP
    text / audio     one branch alone (the unimodal arms, trained on their own)

Inference-time ablation (the report's, no retraining): `model.ablate = "audio"` (or "text")
zeroes that modality's features where they enter the fusion (its pooled vector and, for
cross-attention, its projected frames or tokens), so the head sees no signal from it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .speech import run_layers
from .text import run_text_layers

FUSIONS = ("concat", "gated", "cross_attention", "text", "audio")


def uses(fusion: str) -> tuple[bool, bool]:
    """(needs text, needs audio)."""
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSIONS)}")
    return fusion != "audio", fusion != "text"


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class FusionHead(nn.Module):
    def __init__(self, fusion: str, text_dim: int, audio_dim: int, n_classes: int, width: int = 256,
                 hidden: int = 256, dropout: float = 0.1, heads: int = 4):
        super().__init__()
        self.fusion = fusion
        text, audio = uses(fusion)
        self.text_proj = nn.Sequential(nn.Linear(text_dim, width), nn.LayerNorm(width)) if text else None
        self.audio_proj = nn.Sequential(nn.Linear(audio_dim, width), nn.LayerNorm(width)) if audio else None
        if fusion == "gated":
            self.gate = nn.Linear(2 * width, width)
        if fusion == "cross_attention":
            self.token_proj = nn.Linear(text_dim, width)
            self.frame_proj = nn.Linear(audio_dim, width)
            self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
            self.attended_norm = nn.LayerNorm(width)
        fused = 2 * width if fusion in ("concat", "cross_attention") else width
        self.classifier = nn.Sequential(nn.Linear(fused, hidden), nn.ReLU(), nn.Dropout(dropout),
                                        nn.Linear(hidden, n_classes))

    def forward(self, tokens, token_mask, frames, frame_mask, ablate: str | None = None) -> torch.Tensor:
        keep_text = 0.0 if ablate == "text" else 1.0
        keep_audio = 0.0 if ablate == "audio" else 1.0
        t = self.text_proj(tokens[:, 0]) * keep_text if self.text_proj is not None else None
        a = self.audio_proj(masked_mean(frames, frame_mask)) * keep_audio if self.audio_proj is not None else None
        if self.fusion == "text":
            fused = t
        elif self.fusion == "audio":
            fused = a
        elif self.fusion == "concat":
            fused = torch.cat([t, a], dim=-1)
        elif self.fusion == "gated":
            g = torch.sigmoid(self.gate(torch.cat([t, a], dim=-1)))
            fused = g * t + (1 - g) * a
        else:  # cross_attention
            q = self.token_proj(tokens) * keep_text
            kv = self.frame_proj(frames) * keep_audio
            attended, _ = self.attention(q, kv, kv, key_padding_mask=~frame_mask, need_weights=False)
            fused = torch.cat([self.attended_norm(q + attended)[:, 0], a], dim=-1)
        return self.classifier(fused)


class FusionModel(nn.Module):
    """What a trial trains: the top `k` layers of each encoder it uses (copies, trainable), run
    on the cached states that enter them, then the fusion head. `ablate` is set for the
    inference-time ablation."""

    def __init__(self, head: FusionHead, text_layers=None, audio_layers=None, audio_norm: nn.Module | None = None):
        super().__init__()
        self.head = head
        self.text_top = nn.ModuleList(copy.deepcopy(list(text_layers))).requires_grad_(True) if text_layers else None
        self.audio_top = nn.ModuleList(copy.deepcopy(list(audio_layers))).requires_grad_(True) if audio_layers else None
        self.audio_norm = copy.deepcopy(audio_norm).requires_grad_(True) if audio_norm is not None and audio_layers else None
        self.ablate: str | None = None

    def forward(self, tokens, token_mask, frames, frame_mask) -> torch.Tensor:
        if self.text_top is not None:
            tokens = run_text_layers(self.text_top, tokens.float(), token_mask)
        if self.audio_top is not None:
            frames = run_layers(self.audio_top, frames.float(), self.audio_norm)[-1]
        return self.head(tokens.float() if tokens is not None else None, token_mask,
                         frames.float() if frames is not None else None, frame_mask, self.ablate)


def build_model(config: dict, text_encoder=None, speech_encoder=None) -> FusionModel:
    """The fusion head and copies of each used encoder's top `finetune_top` layers."""
    from ..core.seeding import seed_everything

    seed_everything(int(config["seed"]))
    k = int(config.get("finetune_top", 1))
    head = FusionHead(config["fusion"], int(config["text_dim"]), int(config["audio_dim"]), len(config["classes"]),
                      width=int(config["fusion_width"]), hidden=int(config["head_hidden"]),
                      dropout=float(config["dropout"]))
    text_layers = list(text_encoder.layers[-k:]) if text_encoder is not None and k else None
    audio_layers = list(speech_encoder.layers[-k:]) if speech_encoder is not None and k else None
    norm = speech_encoder.final_norm if speech_encoder is not None else None
    return FusionModel(head, text_layers, audio_layers, norm)


def load_encoders(config: dict, text: bool, audio: bool, device: str = "cpu"):
    """(TextEncoder or None, SpeechEncoder or None) with frozen weights."""
    text_encoder = speech_encoder = None
    if text:
        from .text import TextEncoder

        text_encoder = TextEncoder(config["text_model_path"], int(config["max_length"]), device)
        text_encoder.model.requires_grad_(False)
    if audio:
        from .speech import SpeechEncoder

        speech_encoder = SpeechEncoder(config["audio_model_path"], config.get("window_seconds"), device)
        speech_encoder.model.requires_grad_(False)
    return text_encoder, speech_encoder
