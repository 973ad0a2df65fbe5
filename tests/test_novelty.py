"""MinHash-Jaccard novelty over token shingles: known answers on realistic networks.

Behaviour documented here (k = 10 token shingles, identifiers kept verbatim):
- comments, docstrings and layout do not change the shingle set at all;
- renaming one local variable (2 occurrences) in a ~470-token network keeps exact Jaccard at
  about 0.91, above tau = 0.90, so it is still a duplicate;
- renaming two locals (4 occurrences) drops it to about 0.86: still highly similar but *below*
  tau, i.e. the filter treats it as novel. Each renamed occurrence changes up to k shingles;
- renaming every identifier drops it far below tau. Novelty is textual, not structural.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.search.novelty import NoveltyIndex, jaccard, minhash, shingles, tokens

NET_A = '''import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        residual = self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + residual
        return F.relu(out)


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
        )
        self.layer1 = nn.Sequential(ConvBlock(32, 32), ConvBlock(32, 32))
        self.layer2 = nn.Sequential(ConvBlock(32, 64, stride=2), ConvBlock(64, 64))
        self.layer3 = nn.Sequential(ConvBlock(64, 128, stride=2), ConvBlock(128, 128))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        features = self.stem(x)
        features = self.layer1(features)
        features = self.layer2(features)
        features = self.layer3(features)
        pooled = self.pool(features).flatten(1)
        return self.fc(self.dropout(pooled))
'''

NET_B = '''import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        width = 3
        for channels in (64, 128, 256):
            layers += [nn.Conv2d(width, channels, kernel_size=3, padding=1), nn.ReLU()]
            layers += [nn.MaxPool2d(2)]
            width = channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(256 * 4 * 4, 512), nn.ReLU(),
                                  nn.Linear(512, 10))

    def forward(self, x):
        return self.head(self.features(x))
'''


def with_comments_and_docstrings(code: str) -> str:
    """NET_A with a module docstring, class/method docstrings, comments and extra layout."""
    code = '"""A residual network.\n\nWith a long docstring."""\n# header comment\n' + code
    code = code.replace("class ConvBlock(nn.Module):\n",
                        "class ConvBlock(nn.Module):\n    '''Two convs and a shortcut.'''\n\n")
    code = code.replace("    def forward(self, x):\n",
                        '    def forward(self, x):  # the forward pass\n'
                        '        """Apply the block."""\n\n')
    return code.replace("self.pool = nn.AdaptiveAvgPool2d(1)",
                        "self.pool = nn.AdaptiveAvgPool2d(  # global pooling\n            1\n"
                        "        )")


def test_identical_code_is_duplicate() -> None:
    index = NoveltyIndex()
    index.add("a", NET_A)
    sim, key = index.query(NET_A)
    assert sim == pytest.approx(1.0) and key == "a"
    assert index.is_duplicate(NET_A)


def test_comments_and_docstrings_do_not_matter() -> None:
    decorated = with_comments_and_docstrings(NET_A)
    assert decorated != NET_A
    assert shingles(decorated) == shingles(NET_A)
    assert minhash(decorated).jaccard(minhash(NET_A)) == 1.0


def test_string_statements_that_are_not_docstrings_count() -> None:
    code = "x = 1\n'not a docstring'\n"
    assert "'not a docstring'" in tokens(code)
    assert tokens("def f():\n    'doc'\n    return 'value'\n") == [
        "def", "f", "(", ")", ":", "return", "'value'"]


def test_one_renamed_local_stays_duplicate() -> None:
    renamed = NET_A.replace("residual", "skip")
    exact = jaccard(NET_A, renamed)
    assert exact >= 0.90
    assert minhash(NET_A).jaccard(minhash(renamed)) == pytest.approx(exact, abs=0.05)


def test_two_renamed_locals_are_similar_but_below_tau() -> None:
    renamed = NET_A.replace("residual", "skip").replace("pooled", "flat")
    exact = jaccard(NET_A, renamed)
    assert 0.80 < exact < 0.90  # honest: 4 renamed occurrences cost ~40 of ~450 shingles
    index = NoveltyIndex()
    index.add("a", NET_A)
    sim, key = index.query(renamed)
    assert sim == pytest.approx(exact, abs=0.05) and key == "a"


def test_renaming_everything_looks_novel() -> None:
    renamed = NET_A
    for old, new in [("in_channels", "cin"), ("out_channels", "cout"), ("stride", "s"),
                     ("out", "h"), ("features", "f"), ("ConvBlock", "Block"),
                     ("residual", "r"), ("pooled", "p"), ("shortcut", "sc")]:
        renamed = renamed.replace(old, new)
    assert jaccard(NET_A, renamed) < 0.5


def test_structurally_different_net_is_novel() -> None:
    index = NoveltyIndex()
    index.add("a", NET_A)
    sim, key = index.query(NET_B)
    assert sim < 0.2 and key == "a"  # LSH finds no candidate; the small index is scanned
    assert sim == minhash(NET_A).jaccard(minhash(NET_B))
    assert not index.is_duplicate(NET_B)
    assert jaccard(NET_A, NET_B) < 0.2


def test_empty_index_and_replacement() -> None:
    index = NoveltyIndex()
    assert index.query(NET_A) == (0.0, None) and not index.is_duplicate(NET_A)
    index.add("k", NET_B)
    index.add("k", NET_A)
    assert len(index) == 1 and index.query(NET_A) == (pytest.approx(1.0), "k")


def test_untokenizable_code_falls_back_to_whitespace() -> None:
    broken = 'def f(:\n    x = "unterminated\n    return (\n'
    assert tokens(broken) == broken.split()
    assert shingles(broken)
    assert shingles("a b") == {"a\x1fb"} and shingles("") == set()


def test_add_corpus(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "a.py").write_text(NET_A)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"messages": [{"role": "user", "content": "x"},
                                               {"role": "assistant", "content": NET_B}]}) + "\n")
    other = NoveltyIndex()
    assert other.add_corpus([ref, corpus]) == 2
    assert other.is_duplicate(NET_A) and other.is_duplicate(NET_B)
