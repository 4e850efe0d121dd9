"""S6: the four facial-expression CNNs, for 1 × 48 × 48 grey faces → 7 classes.

The report gives each network's shape (blocks, order of layers, where pooling sits); the
widths it did not give are chosen here and pinned by the parameter counts in
tests/test_fer.py. Each is one entry of ARCHITECTURES, built by name.
"""
from __future__ import annotations

import torch
from torch import nn

N_CLASSES = 7


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def fc_block(n_in: int, n_out: int, dropout: float) -> list[nn.Module]:
    """Linear → BatchNorm → ReLU → Dropout (the report's FC blocks)."""
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]


class BasicCNN(nn.Module):
    """Three convs (32/64/128), each followed by MaxPool and ReLU, then two FC layers."""

    def __init__(self, dropout: float = 0.0, n_classes: int = N_CLASSES):
        super().__init__()
        layers, c = [], 1
        for width in (32, 64, 128):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            c = width
        self.features = nn.Sequential(*layers)  # 48 → 24 → 12 → 6
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * 6 * 6, 256), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(256, n_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class EnhancedNeuralNet(nn.Module):
    """Four conv blocks (conv → BatchNorm → ReLU → Dropout → MaxPool) of growing width, then
    FC blocks (Linear → BatchNorm → ReLU → Dropout)."""

    def __init__(self, dropout: float = 0.25, n_classes: int = N_CLASSES):
        super().__init__()
        layers, c = [], 1
        for width in (32, 64, 128, 256):
            layers += [*conv_bn_relu(c, width), nn.Dropout(dropout), nn.MaxPool2d(2)]
            c = width
        self.features = nn.Sequential(*layers)  # 48 → 3
        self.classifier = nn.Sequential(nn.Flatten(), *fc_block(256 * 3 * 3, 512, dropout),
                                        *fc_block(512, 256, dropout), nn.Linear(256, n_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class ResidualBlock(nn.Module):
    """Two conv + BN (+ ReLU) with a skip connection (1×1 conv when the shape changes),
    optional dropout."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(*conv_bn_relu(c_in, c_out, stride),
                                  nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)))
        self.out = nn.Sequential(nn.ReLU(inplace=True), nn.Dropout2d(dropout) if dropout else nn.Identity())

    def forward(self, x):
        return self.out(self.body(x) + self.skip(x))


class AdvancedNetwork(nn.Module):
    """A stem conv block, residual blocks that grow channels and downsample, adaptive average
    pooling to 1×1 and an FC classifier. The report's choice."""

    def __init__(self, dropout: float = 0.25, n_classes: int = N_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(1, 32))
        self.blocks = nn.Sequential(ResidualBlock(32, 64, 2, dropout), ResidualBlock(64, 128, 2, dropout),
                                    ResidualBlock(128, 256, 2, dropout))  # 48 → 24 → 12 → 6
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(256, 128), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(128, n_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.blocks(self.stem(x))))


class SqueezeExcitation(nn.Module):
    """Channel attention: global average → bottleneck MLP → sigmoid gate per channel."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, channels // reduction),
                                  nn.ReLU(inplace=True), nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)[:, :, None, None]


class EmotionRecognitionNet(nn.Module):
    """Four conv blocks with Dropout2d (the 1st, 2nd and 4th with MaxPool), two more conv
    blocks without pooling, a squeeze-and-excitation block, then FC blocks."""

    def __init__(self, dropout: float = 0.25, n_classes: int = N_CLASSES):
        super().__init__()

        def block(c_in, c_out, pool):
            return [*conv_bn_relu(c_in, c_out), nn.Dropout2d(dropout)] + ([nn.MaxPool2d(2)] if pool else [])
        self.features = nn.Sequential(
            *block(1, 32, True), *block(32, 64, True), *block(64, 128, False), *block(128, 128, True),  # 48 → 6
            *conv_bn_relu(128, 256), *conv_bn_relu(256, 256),
            SqueezeExcitation(256),
            nn.AdaptiveAvgPool2d(3),
        )
        self.classifier = nn.Sequential(nn.Flatten(), *fc_block(256 * 3 * 3, 256, dropout), nn.Linear(256, n_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


ARCHITECTURES = {
    "basic_cnn": BasicCNN,
    "enhanced": EnhancedNeuralNet,
    "advanced_resnet": AdvancedNetwork,
    "emotion_se": EmotionRecognitionNet,
}


def build_fer_net(name: str, dropout: float, n_classes: int = N_CLASSES) -> nn.Module:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name](dropout=dropout, n_classes=n_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":  # parameter counts and a CPU speed check
    import time

    for name in ARCHITECTURES:
        net = build_fer_net(name, 0.25)
        x, y = torch.rand(128, 1, 48, 48), torch.randint(0, 7, (128,))
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        t = time.perf_counter()
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        print(f"{name:16s} {count_params(net):>10,d} params  {3 * 128 / (time.perf_counter() - t):7.0f} img/s train")
