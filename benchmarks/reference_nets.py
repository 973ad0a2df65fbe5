"""Fixed reference candidates for the evaluator benchmark, as candidate source strings.

Each entry is the text of a `candidate.py` that defines `Net()` (no arguments) the way the
search loop's generated candidates do. The input channel count and class count are baked into
the source by `source(name, in_channels, num_classes)`; every net ends in global average
pooling, so the same source works for 3x32x32 (CIFAR-10) and 1x28x28 (Fashion-MNIST).

Standard library only: the benchmark host never imports torch.
"""

from __future__ import annotations

_HEADER = '''import torch
import torch.nn.functional as F
from torch import nn

IN_CHANNELS = {in_channels}
NUM_CLASSES = {num_classes}
'''

# About 0.02 M parameters (three 3x3 convs with BN): the cheapest plausible candidate,
# dominated by fixed costs.
TINY = '''

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(IN_CHANNELS, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
'''

# Six 3x3 conv layers 64-128-256 with BN, three max-pools, a small classifier (about 1.2 M).
VGG = '''

def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            block(IN_CHANNELS, 64), block(64, 64), nn.MaxPool2d(2),
            block(64, 128), block(128, 128), nn.MaxPool2d(2),
            block(128, 256), block(256, 256), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(128, NUM_CLASSES),
        )

    def forward(self, x):
        x = self.features(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1))
'''

# ResNet-18 for small images (3x3 stem, no stem pooling): BasicBlocks [2, 2, 2, 2], 64-512
# channels, about 11.2 M parameters.
RESNET18 = '''

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(IN_CHANNELS, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, NUM_CLASSES)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
'''

BODIES = {"tiny": TINY, "vgg": VGG, "resnet18": RESNET18}
NAMES = tuple(BODIES)


def source(name: str, in_channels: int = 3, num_classes: int = 10) -> str:
    """The candidate.py text of reference net `name` for the given input channels/classes."""
    if name not in BODIES:
        raise KeyError(f"unknown reference net {name!r}; choose from {', '.join(NAMES)}")
    header = _HEADER.format(in_channels=int(in_channels), num_classes=int(num_classes))
    return header + BODIES[name]
