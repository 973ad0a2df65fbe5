"""Code extraction and static checks on realistic and hostile LLM replies."""

from __future__ import annotations

import ast
import random

import pytest

from orchestrator.outcomes import CONTRACT_ERROR, EXTRACT_ERROR, OK, SYNTAX_ERROR
from orchestrator.search.extract import Extraction, extract_code, undefined_names
from tests.replies import (
    NAN_NET,
    NO_CODE_REPLY,
    NO_NET_CLASS,
    RUNTIME_ERROR_NET,
    SHAPE_MISMATCH_NET,
    SYNTAX_ERROR_REPLY,
    VALID_NET,
    VALID_NET_WIDER,
    WRONG_OUTPUT_NET,
    prose_wrapped,
)

STATUSES = {OK, EXTRACT_ERROR, SYNTAX_ERROR, CONTRACT_ERROR}


def fenced(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code.rstrip()}\n```"


@pytest.mark.parametrize(
    "net",
    [VALID_NET, VALID_NET_WIDER, SHAPE_MISMATCH_NET, WRONG_OUTPUT_NET, RUNTIME_ERROR_NET, NAN_NET],
)
def test_statically_valid_nets_extract_ok(net: str) -> None:
    result = extract_code(prose_wrapped(net))
    assert result.status == OK, result.message
    assert result.code == net.rstrip("\n")


@pytest.mark.parametrize("lang", ["python", "py", "Python", "PYTHON", "python3", ""])
def test_fence_languages(lang: str) -> None:
    reply = f"Sure!\n\n{fenced(VALID_NET, lang)}\n\nDone."
    assert extract_code(reply).code == VALID_NET.rstrip("\n")


def test_tilde_fence_and_indented_fence() -> None:
    assert extract_code(f"~~~python\n{VALID_NET}~~~\n").status == OK
    lines = fenced(VALID_NET).split("\n")
    indented = "1. The model:\n\n" + "\n".join("   " + line for line in lines)
    result = extract_code(indented)
    assert result.status == OK and result.code == VALID_NET.rstrip("\n")


def test_unterminated_final_fence() -> None:
    result = extract_code(f"Here you go:\n```python\n{VALID_NET}")
    assert result.status == OK and result.code == VALID_NET.rstrip("\n")


def test_no_fence_whole_reply_is_code() -> None:
    assert extract_code(VALID_NET).status == OK


def test_no_fence_prose_around_code() -> None:
    reply = f"Here is the network:\n{VALID_NET}\nThis should reach about 90% accuracy."
    result = extract_code(reply)
    assert result.status == OK, result.message
    assert result.code is not None and result.code.startswith("import torch")
    assert "accuracy" not in result.code


def test_windows_newlines_and_tabs() -> None:
    tabbed = VALID_NET.replace("    ", "\t")
    result = extract_code(prose_wrapped(tabbed).replace("\n", "\r\n"))
    assert result.status == OK, result.message
    assert result.code is not None and "\r" not in result.code


def test_mixed_tabs_and_spaces_are_repaired() -> None:
    lines = VALID_NET.split("\n")
    lines = [line.replace("        ", "\t", 1) if "return" in line else line for line in lines]
    result = extract_code(fenced("\n".join(lines)))
    assert result.status == OK, result.message


def test_last_block_defining_net_wins() -> None:
    reply = (
        f"First attempt:\n{fenced(VALID_NET)}\nUsage:\n{fenced('model = Net()')}\n"
        f"Better version:\n{fenced(VALID_NET_WIDER)}\nTraining:\n{fenced('opt = 1')}\n"
    )
    for _ in range(3):
        assert extract_code(reply).code == VALID_NET_WIDER.rstrip("\n")


def test_imports_from_a_separate_block_are_prepended() -> None:
    imports = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\nimport os"
    body = VALID_NET_WIDER.split("\n", 4)[4]  # drop the three import lines
    assert "import" not in body.split("class", 1)[0]
    reply = f"Imports:\n{fenced(imports)}\nModel:\n{fenced(body)}"
    result = extract_code(reply)
    assert result.status == OK, result.message
    assert result.code is not None
    # Only the imports binding names the code uses (it never names `torch` itself).
    assert result.code.startswith("import torch.nn as nn\nimport torch.nn.functional as F\n\n")
    assert "import os" not in result.code and "import torch\n" not in result.code
    assert "2 import(s) and definition(s) from other blocks" in result.message


def test_non_python_blocks_are_not_chosen() -> None:
    reply = f"{fenced('pip install torch', 'bash')}\n{fenced(VALID_NET)}\n{fenced('{}', 'json')}"
    assert extract_code(reply).code == VALID_NET.rstrip("\n")


def test_syntax_error_reports_the_line() -> None:
    result = extract_code(SYNTAX_ERROR_REPLY)
    assert result.status == SYNTAX_ERROR
    assert result.code is not None
    line = result.code.split("\n").index("    def forward(self, x)") + 1
    assert f"line {line}:" in result.message and "def forward(self, x)" in result.message


def test_no_code() -> None:
    result = extract_code(NO_CODE_REPLY)
    assert result.status == EXTRACT_ERROR and result.code is None


def test_no_net_class_lists_classes_found() -> None:
    result = extract_code(NO_NET_CLASS)
    assert result.status == CONTRACT_ERROR
    assert "Model" in result.message


def test_net_nested_in_if_is_not_top_level() -> None:
    code = "import torch.nn as nn\nif True:\n    class Net(nn.Module):\n        pass\n"
    result = extract_code(fenced(code))
    assert result.status == CONTRACT_ERROR and "class Net" in result.message


def test_net_alias_to_a_top_level_class_is_accepted() -> None:
    code = VALID_NET.replace("class Net(", "class TinyCNN(") + "\n\nNet = TinyCNN\n"
    assert extract_code(fenced(code)).status == OK


@pytest.mark.parametrize(
    ("signature", "status"),
    [
        ("def __init__(self):", OK),
        ("def __init__(self, num_classes=10, width=32):", OK),
        ("def __init__(self, *args, **kwargs):", OK),
        ("def __init__(self, *, dropout=0.1):", OK),
        ("def __init__(self, num_classes):", CONTRACT_ERROR),
        ("def __init__(self, *, dropout):", CONTRACT_ERROR),
        ("def __init__():", CONTRACT_ERROR),
    ],
)
def test_init_signature(signature: str, status: str) -> None:
    code = f"import torch.nn as nn\n\nclass Net(nn.Module):\n    {signature}\n        pass\n"
    result = extract_code(fenced(code))
    assert result.status == status, result.message


def test_init_missing_is_fine() -> None:
    code = "import torch.nn as nn\n\nclass Net(nn.Sequential):\n    pass\n"
    assert extract_code(code).status == OK


# -- hostile input ---------------------------------------------------------------------------
def test_empty_and_whitespace() -> None:
    for reply in ("", "   \n\t\n"):
        assert extract_code(reply).status == EXTRACT_ERROR


@pytest.mark.parametrize("reply", ["```", "```python", "```python\n```", "```\n\n```\n", "~~~"])
def test_only_a_fence(reply: str) -> None:
    assert extract_code(reply).status == EXTRACT_ERROR


def test_class_net_in_prose() -> None:
    reply = "You should define a class Net that subclasses nn.Module and returns logits."
    assert extract_code(reply).status == EXTRACT_ERROR


def test_class_net_line_in_prose_is_a_syntax_error() -> None:
    reply = "class Net is the model I would build, with three conv layers and pooling."
    result = extract_code(reply)
    assert result.status == SYNTAX_ERROR


def test_binary_junk() -> None:
    rng = random.Random(1234)
    junk = bytes(rng.randrange(256) for _ in range(20_000)).decode("latin-1")
    for reply in (junk, junk + fenced(VALID_NET), "\x00" * 100 + "```python\n\x00\x01\n```"):
        result = extract_code(reply)
        assert isinstance(result, Extraction) and result.status in STATUSES
    assert extract_code(junk + "\n" + fenced(VALID_NET)).status == OK


def test_a_megabyte_of_text() -> None:
    prose = ("lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20 + "\n") * 900
    assert len(prose) > 1_000_000
    assert extract_code(prose).status == EXTRACT_ERROR
    assert extract_code(prose + fenced(VALID_NET) + prose).status == OK
    assert extract_code("(" * 200_000).status in STATUSES
    assert extract_code("class Net:\n" + "x = [" * 100_000).status == SYNTAX_ERROR


def test_non_string_input_does_not_raise() -> None:
    assert extract_code(None).status == EXTRACT_ERROR  # type: ignore[arg-type]
    assert extract_code(b"class Net: pass").status in STATUSES  # type: ignore[arg-type]


def test_code_is_never_executed(tmp_path: pytest.TempPathFactory) -> None:
    marker = tmp_path / "executed"  # type: ignore[operator]
    code = f"open({str(marker)!r}, 'w').write('x')\n{VALID_NET}"
    assert extract_code(fenced(code)).status == OK
    assert not marker.exists()


def test_a_reasoning_trace_and_its_draft_are_ignored() -> None:
    # A reasoning model's trace (DeepSeek-R1, Qwen3) holds a fenced draft; the answer after it
    # comes unfenced. Without removing the trace, the draft would be the only fenced block.
    reply = (f"<think>\nFirst idea:\n{fenced(VALID_NET_WIDER)}\nToo wide; go smaller.\n</think>\n"
             f"{VALID_NET}")
    result = extract_code(reply)
    assert result.status == OK
    assert result.code == VALID_NET.strip("\n")


def test_a_reasoning_trace_cut_short_leaves_no_code() -> None:
    reply = f"<think>\nLet me try:\n{fenced(VALID_NET)}\nHmm, but then"  # num_predict ran out
    assert extract_code(reply).status == EXTRACT_ERROR


def test_a_think_tag_inside_the_answer_is_kept() -> None:
    code = VALID_NET.replace("import torch\n", "import torch  # no <think> tags here\n", 1)
    result = extract_code(fenced(code))
    assert result.status == OK and "no <think> tags here" in result.code


RESIDUAL_BLOCK = '''import torch
import torch.nn as nn
import torch.nn.functional as F


class Shortcut(nn.Module):
    def forward(self, x):
        return x


class ResidualBlock(Shortcut):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn1(self.conv1(x)))
'''

NET_USING_BLOCKS = '''class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, WIDTH, 3, padding=1)
        self.blocks = nn.Sequential(ResidualBlock(WIDTH), ResidualBlock(WIDTH))
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
'''


def test_helper_classes_from_other_blocks_are_assembled() -> None:
    """A residual block (and its base class, and a constant) defined in blocks of their own:
    the Net block depends on them, so they come along, each before what uses it."""
    reply = (f"First the building block:\n{fenced(RESIDUAL_BLOCK)}\nA constant:\n"
             f"{fenced('WIDTH = 32')}\nThen the network:\n{fenced(NET_USING_BLOCKS)}")
    result = extract_code(reply)
    assert result.status == OK, result.message
    code = result.code
    assert code.index("class Shortcut") < code.index("class ResidualBlock") < \
        code.index("class Net") and "WIDTH = 32" in code
    assert undefined_names(ast.parse(code)) == set()
    assert "from other blocks" in result.message


FIXED_FORWARD = '''class Net(nn.Module):
    def forward(self, x):  # the fix: pool before the head
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))
'''


def test_a_trailing_fragment_does_not_replace_the_complete_net() -> None:
    reply = (f"Here is the model:\n{fenced(VALID_NET)}\nAnd the fixed forward:\n"
             f"{fenced(FIXED_FORWARD)}")
    result = extract_code(reply)
    assert result.status == OK and result.code == VALID_NET.rstrip("\n")
