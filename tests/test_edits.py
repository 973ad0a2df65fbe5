"""Applying edits (search/edits.py): placement rules, refusals and hostile replies."""

from __future__ import annotations

import pytest

from orchestrator import outcomes as fc
from orchestrator.search.edits import (
    FUZZY_MAX_BASE_LINES,
    MAX_BLOCKS,
    apply_reply,
    parse_udiff,
)
from tests import replies

NET = replies.VALID_NET.rstrip("\n")


def sr(*pairs: tuple[str, str]) -> str:
    """A reply of SEARCH/REPLACE blocks, each in its own fence."""
    return "\n\n".join(f"```python\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n```"
                       for old, new in pairs)


def test_blocks_apply_in_order_each_to_the_result_of_those_before():
    reply = sr(("        self.pool = nn.AdaptiveAvgPool2d(1)",
                "        self.pool = nn.AdaptiveMaxPool2d(1)"),
               ("        self.pool = nn.AdaptiveMaxPool2d(1)",  # only there after block 1
                "        self.pool = nn.AdaptiveMaxPool2d(2)"))
    edit = apply_reply(reply, NET, "search-replace")
    assert (edit.status, edit.kind, edit.blocks) == (fc.OK, "edit", 2)
    assert edit.code == NET.replace("AdaptiveAvgPool2d(1)", "AdaptiveMaxPool2d(2)")
    assert edit.edit.count("<<<<<<< SEARCH") == 2


def test_a_failing_block_refuses_the_whole_edit():
    reply = sr(("        self.pool = nn.AdaptiveAvgPool2d(1)",
                "        self.pool = nn.AdaptiveMaxPool2d(1)"),
               ("        self.head = nn.Linear(512, 10)",
                "        self.head = nn.Linear(512, 100)"))
    edit = apply_reply(reply, NET, "search-replace")
    assert (edit.status, edit.code, edit.applied) == (fc.EDIT_ERROR, None, False)
    assert edit.message.startswith("block 2 [self.head = nn.Linear(512, 10)] is not in the code")
    assert "nearest text there (line " in edit.message


def test_whitespace_drift_is_placed_and_reindented():
    reply = sr(("self.classifier = nn.Linear(32, num_classes)",
                "self.drop = nn.Dropout(0.1)\nself.classifier = nn.Linear(32, num_classes)"))
    edit = apply_reply(reply, NET, "search-replace")
    assert edit.code == NET.replace(
        "        self.classifier = nn.Linear(32, num_classes)",
        "        self.drop = nn.Dropout(0.1)\n        self.classifier = nn.Linear(32, num_classes)")


def test_a_near_miss_is_placed_only_above_the_threshold():
    # "clasifier": one letter missing; the difflib ratio is about 0.99.
    reply = sr(("        self.pool = nn.AdaptiveAvgPool2d(1)\n"
                "        self.clasifier = nn.Linear(32, num_classes)",
                "        self.pool = nn.AdaptiveAvgPool2d(1)\n"
                "        self.classifier = nn.Linear(32, 10)"))
    placed = apply_reply(reply, NET, "search-replace", threshold=0.95)
    assert placed.code == NET.replace("nn.Linear(32, num_classes)", "nn.Linear(32, 10)")
    refused = apply_reply(reply, NET, "search-replace", threshold=0.999)
    assert refused.status == fc.EDIT_ERROR
    assert "the nearest text there (line 20, similarity 0.99) is [self.pool" in refused.message


def test_different_numbers_are_not_a_near_miss():
    # Lines of a layer the code does not have, alike but for the numbers (ratio 0.89).
    edit = apply_reply(replies.UDIFF_MISSING_CONTEXT, NET, "udiff")
    assert edit.status == fc.EDIT_ERROR and "similarity 0.89" in edit.message


@pytest.mark.parametrize("old", [
    "            nn.ReLU(inplace=True),\n            nn.MaxPool2d(2),",  # exact, twice
    "nn.ReLU(inplace=True),\nnn.MaxPool2d(2),",  # ignoring whitespace, twice
    "            nn.ReLU(inplace=Tru),\n            nn.MaxPool2d(2),",  # fuzzy, twice
])
def test_a_block_that_matches_two_places_is_refused(old):
    edit = apply_reply(sr((old, "            nn.GELU(),\n            nn.MaxPool2d(2),")), NET,
                       "search-replace")
    assert edit.status == fc.EDIT_ERROR and edit.code is None
    assert "matches 2 places" in edit.message or "close to 2 places" in edit.message
    assert "lines 13, 17" in edit.message


def test_udiff_hunks_as_models_write_them():
    # No file header, `@@ ... @@` without numbers, an empty context line without its space, a
    # "\ No newline" marker, prose between the hunks.
    reply = ("Two changes.\n\n```diff\n@@ ... @@\n         self.pool = nn.AdaptiveAvgPool2d(1)\n"
             "+        self.dropout = nn.Dropout(0.2)\n         self.classifier = "
             "nn.Linear(32, num_classes)\n\n     def forward(self, x: torch.Tensor) -> "
             "torch.Tensor:\n```\nAnd:\n```diff\n@@ -27,1 +27,1 @@\n-        return "
             "self.classifier(x)\n+        return self.classifier(self.dropout(x))\n"
             "\\ No newline at end of file\n```\n")
    edit = apply_reply(reply, NET, "udiff")
    assert edit.status == fc.OK and edit.blocks == 2
    assert edit.code == NET.replace(
        "        self.pool = nn.AdaptiveAvgPool2d(1)\n",
        "        self.pool = nn.AdaptiveAvgPool2d(1)\n        self.dropout = nn.Dropout(0.2)\n"
    ).replace("return self.classifier(x)", "return self.classifier(self.dropout(x))")


def test_a_udiff_with_file_headers_keeps_its_hunks_apart():
    blocks, raw = parse_udiff("--- a/net.py\n+++ b/net.py\n@@ -1,2 +1,2 @@\n-a\n+b\n c\n"
                              "--- a/other.py\n+++ b/other.py\n@@ -5 +5 @@\n-d\n+e\n")
    assert [(b.old, b.new) for b in blocks] == [(["a", "c"], ["b", "c"]), (["d"], ["e"])]
    assert "other.py" not in raw


def test_a_hunk_without_context_is_refused():
    edit = apply_reply("```diff\n@@ @@\n+import math\n```", NET, "udiff")
    assert edit.status == fc.EDIT_ERROR
    assert edit.message.startswith("block 1 has no old text to find")


def test_a_block_cut_short_is_refused():
    edit = apply_reply("<<<<<<< SEARCH\n        self.pool = nn.AdaptiveAvgPool2d(1)\n=======\n"
                       "        self.pool = nn.Adaptive", NET, "search-replace")
    assert edit.status == fc.EDIT_ERROR
    assert "block 1 has no >>>>>>> REPLACE line" in edit.message


def test_a_whole_net_is_taken_as_is_and_prose_is_an_edit_error():
    whole = apply_reply(replies.prose_wrapped(replies.VALID_NET_WIDER), NET, "search-replace")
    assert (whole.status, whole.kind) == (fc.OK, "whole")
    assert whole.code == replies.VALID_NET_WIDER.rstrip("\n")
    prose = apply_reply(replies.NO_CODE_REPLY, NET, "udiff")
    assert prose.status == fc.EDIT_ERROR
    assert prose.message.startswith("the reply holds no udiff edit and no complete module")


def test_the_whole_format_and_a_first_iteration_read_whole_files():
    reply = replies.prose_wrapped(replies.VALID_NET)
    assert apply_reply(reply, None, "udiff").kind == "whole"
    assert apply_reply(replies.SR_ONE_BLOCK, NET, "whole").status == fc.SYNTAX_ERROR


def test_an_edit_that_breaks_the_code_is_judged_as_code():
    edit = apply_reply(sr(("    def forward(self, x: torch.Tensor) -> torch.Tensor:",
                           "    def forward(self, x: torch.Tensor) -> torch.Tensor")),
                       NET, "search-replace")
    assert (edit.status, edit.kind) == (fc.SYNTAX_ERROR, "edit")


def test_hostile_replies_never_raise():
    too_many = sr(*[("        self.pool = nn.AdaptiveAvgPool2d(1)",) * 2] * (MAX_BLOCKS + 1))
    assert apply_reply(too_many, NET, "search-replace").message == \
        f"{MAX_BLOCKS + 1} edit blocks, more than {MAX_BLOCKS}"
    huge_base = NET + "\n" + "# filler\n" * FUZZY_MAX_BASE_LINES
    far = apply_reply(sr(("self.pol = nn.AdaptiveAvgPool2d(1)", "x = 1")), huge_base,
                      "search-replace")
    assert far.status == fc.EDIT_ERROR and "too large for a fuzzy search" in far.message
    for reply in ["\x00<<<<<<< SEARCH\n\ud800\n=======\n>>>>>>> REPLACE", "@@\n" * 5000,
                  None, 42, "=======\n>>>>>>> REPLACE\n<<<<<<< SEARCH"]:
        for fmt in ("search-replace", "udiff"):
            edit = apply_reply(reply, NET, fmt)  # type: ignore[arg-type]
            assert edit.status != fc.OK, (reply, fmt)
