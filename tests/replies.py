"""Realistic canned LLM replies for a 1x28x28, 10-class task (Fashion-MNIST)."""

from __future__ import annotations

import json

VALID_NET = '''\
import torch
import torch.nn as nn


class Net(nn.Module):
    """Two conv-bn-relu-pool stages, global average pooling and a linear classifier."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(x)
'''

VALID_NET_WIDER = '''\
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, 2)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stage1 = ConvBlock(1, 16)
        self.stage2 = ConvBlock(16, 32)
        self.dropout = nn.Dropout(0.25)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stage2(self.stage1(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(self.dropout(x))
'''

SHAPE_MISMATCH_NET = '''\
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        # Assumes 32x32 inputs: 64 * 8 * 8, but 28x28 inputs give 64 * 7 * 7 = 3136.
        self.fc1 = nn.Linear(64 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)
'''

WRONG_OUTPUT_NET = '''\
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(32, 7)  # wrong number of classes

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))
'''

# Works in eval mode and for the first four training-mode forwards, then IndexError.
RUNTIME_ERROR_NET = '''\
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(64, 10)
        # Per-step feature scaling "warm-up"; only four entries, indexed by a step counter.
        self.warmup = [0.25, 0.5, 0.75, 1.0]
        self.step = -1

    def forward(self, x):
        x = self.body(x).flatten(1)
        if self.training:
            self.step += 1
            x = x * self.warmup[self.step]
        return self.fc(x)
'''

NAN_NET = '''\
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(64, 10)
        self.log_temperature = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = self.fc(self.body(x).flatten(1))
        # Bug: sqrt of a negative number, so every logit is NaN.
        scale = torch.sqrt(self.log_temperature - 1.0)
        return logits * scale
'''


def prose_wrapped(code: str) -> str:
    """Explanatory text, the code in a ```python fence, and trailing remarks."""
    return (
        "Here is an improved architecture for the 28x28 grayscale images. Based on the "
        "previous results, I added batch normalisation after each convolution and replaced "
        "the large fully connected layer with global average pooling.\n\n"
        f"```python\n{code.rstrip()}\n```\n\n"
        "This network has far fewer parameters, should train quickly within one epoch, and "
        "the `class Net` takes no constructor arguments as required.\n"
    )


SYNTAX_ERROR_REPLY = prose_wrapped(
    '''\
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x)
        x = torch.relu(self.conv(x))
        x = x.mean(dim=(2, 3))
        return self.fc(x)
'''
)

NO_CODE_REPLY = (
    "To improve accuracy on Fashion-MNIST, I recommend a deeper convolutional network with "
    "batch normalisation, dropout before the classifier, and global average pooling instead "
    "of flattening. You could also try residual connections; they help gradients flow and "
    "usually add one or two points of accuracy.\n"
)

NO_NET_CLASS = prose_wrapped(
    '''\
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(),
                                    nn.Linear(256, 10))

    def forward(self, x):
        return self.layers(x)
'''
)


def diagnosis_json(reason: str, inspiration: str, suggestions: str) -> str:
    """A well-formed Prompt Improver reply."""
    return json.dumps(
        {"reason": reason, "inspiration": inspiration, "suggestions": suggestions}, indent=2
    )


DIAGNOSIS_PROSE_WRAPPED = (
    "I looked at the error and the accuracy history. Here is my analysis {as requested}:\n\n"
    "```json\n"
    + diagnosis_json(
        "The first Linear layer expects 4096 features {64*8*8} but receives 3136 (64*7*7).",
        "Global average pooling (Network in Network) makes the head independent of input size.",
        "Replace the flatten + Linear(4096) with nn.AdaptiveAvgPool2d(1) and Linear(64, 10).",
    )
    + "\n```\n\nLet me know if you want a more aggressive change.\n"
)

DIAGNOSIS_LIST_SUGGESTIONS = json.dumps(
    {
        "Reason": "Accuracy plateaued at 88% because the network is too shallow.",
        "Inspiration": "VGG-style stacks of 3x3 convolutions; ResNet skip connections.",
        "Suggestions": [
            "Add a third conv stage with 128 channels.",
            "Use two 3x3 convolutions per stage.",
            "Add dropout 0.3 before the classifier.",
        ],
    }
)

DIAGNOSIS_GARBAGE = (
    "I'm sorry, but I can't help with that right now. The model seems fine... or maybe not?"
    " <|im_end|> \x00\x01 ]]]} ;;; ~~~"
)


# -- edits (--edit-format search-replace / udiff) of VALID_NET and SHAPE_MISMATCH_NET ---------
def edit_wrapped(intro: str, body: str, lang: str = "python") -> str:
    """An edit reply as models write them: a sentence, the edit in a fence, a closing remark."""
    return f"{intro}\n\n```{lang}\n{body.rstrip()}\n```\n\nThis keeps the rest of the network.\n"


SR_ONE_BLOCK = edit_wrapped("Max pooling keeps the strongest activations; one change:", '''\
<<<<<<< SEARCH
        self.pool = nn.AdaptiveAvgPool2d(1)
=======
        self.pool = nn.AdaptiveMaxPool2d(1)
>>>>>>> REPLACE''')

SR_TWO_BLOCKS = edit_wrapped("Dropout before the classifier regularises the head:", '''\
<<<<<<< SEARCH
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)
=======
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(32, num_classes)
>>>>>>> REPLACE
```

And in `forward`:

```python
<<<<<<< SEARCH
        return self.classifier(x)
=======
        return self.classifier(self.dropout(x))
>>>>>>> REPLACE''')

# The model wrote the blocks flush left or under-indented, one line with a trailing space
# (<SP>): whitespace drift.
SR_WHITESPACE_DRIFT = edit_wrapped("Wider second stage:", '''\
<<<<<<< SEARCH
nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False),<SP>
nn.BatchNorm2d(32),
=======
nn.Conv2d(16, 48, kernel_size=3, padding=1, bias=False),
nn.BatchNorm2d(48),
>>>>>>> REPLACE
```

```python
<<<<<<< SEARCH
    self.classifier = nn.Linear(32, num_classes)
=======
    self.classifier = nn.Linear(48, num_classes)
>>>>>>> REPLACE''').replace("<SP>", " ")

# Both stages end with these two lines: the block matches twice.
SR_MATCHES_TWICE = edit_wrapped("Add spatial dropout after pooling:", '''\
<<<<<<< SEARCH
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
=======
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Dropout2d(0.1),
>>>>>>> REPLACE''')

# A fix of SHAPE_MISMATCH_NET (28x28 inputs give 7x7 maps), as a unified diff.
UDIFF_FIX_FAILED = edit_wrapped("The flattened size is 64 * 7 * 7 for 28x28 inputs:", '''\
--- a/net.py
+++ b/net.py
@@ -10,7 +10,7 @@ class Net(nn.Module):
         self.pool = nn.MaxPool2d(2)
         # Assumes 32x32 inputs: 64 * 8 * 8, but 28x28 inputs give 64 * 7 * 7 = 3136.
-        self.fc1 = nn.Linear(64 * 8 * 8, 128)
+        self.fc1 = nn.Linear(64 * 7 * 7, 128)
         self.fc2 = nn.Linear(128, 10)
<SP>
     def forward(self, x):'''.replace("<SP>", " "), lang="diff")

# Context of a layer the code does not have: the hunk cannot be placed.
UDIFF_MISSING_CONTEXT = edit_wrapped("Add a third stage:", '''\
@@ -14,6 +14,10 @@
             nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=False),
             nn.BatchNorm2d(64),
             nn.ReLU(inplace=True),
+            nn.Conv2d(64, 128, kernel_size=3, padding=1, bias=False),
+            nn.BatchNorm2d(128),
+            nn.ReLU(inplace=True),
         )''', lang="diff")

UDIFF_TWO_HUNKS = edit_wrapped("Dropout before the classifier:", '''\
@@ ... @@
         self.pool = nn.AdaptiveAvgPool2d(1)
+        self.dropout = nn.Dropout(0.2)
         self.classifier = nn.Linear(32, num_classes)
@@ ... @@
-        return self.classifier(x)
+        return self.classifier(self.dropout(x))''', lang="diff")
