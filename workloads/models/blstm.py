"""S4's Attention_BLSTM: a bidirectional LSTM over hand-made frame features with local
attention, as the report built it in Keras.

    (T=157, 46) → BLSTM, 256 units each way, all outputs and final states
               → Dense(256, no bias) → Dense(1, no bias) → softmax over the T frames
               → attention-weighted sum of the outputs (512) ++ final states of both directions (512)
               → Dense(n_classes)

Keras counts 758,022 parameters for 6 classes (one bias per LSTM gate); PyTorch's LSTM has a
second bias vector per gate, 2,048 more (tests/test_blstm.py pins both). The report's scorer is
two linear maps with nothing between them, kept as written.
"""
from __future__ import annotations

import torch
from torch import nn

KERAS_PARAMS_6 = 758_022  # the report's count for 6 classes
TORCH_EXTRA_BIAS = 2 * 4 * 256  # the second LSTM bias vector, both directions


class AttentionBLSTM(nn.Module):
    def __init__(self, n_features: int = 46, n_classes: int = 6, hidden: int = 256, attention: int = 256,
                 dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Sequential(nn.Linear(2 * hidden, attention, bias=False), nn.Linear(attention, 1, bias=False))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(4 * hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, (h, _) = self.lstm(x)  # (B, T, 2H); h: (2, B, H)
        weights = torch.softmax(self.score(outputs).squeeze(-1), dim=-1)  # (B, T)
        context = torch.einsum("bt,btd->bd", weights, outputs)
        final = torch.cat([h[0], h[1]], dim=-1)
        return self.out(self.dropout(torch.cat([context, final], dim=-1)))


def keras_parameter_count(model: AttentionBLSTM) -> int:
    """The count Keras reports for the same network: PyTorch's minus its second LSTM biases."""
    extra = sum(p.numel() for name, p in model.lstm.named_parameters() if name.startswith("bias_hh"))
    return sum(p.numel() for p in model.parameters()) - extra
