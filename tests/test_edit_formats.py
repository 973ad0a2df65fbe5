"""`orchestrator run --edit-format` end to end: scripted edit replies, real Fashion-MNIST, the
local sandbox; the files the edits make are exactly the expected ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import outcomes as fc
from orchestrator.analysis.report import build_report
from orchestrator.store.run import read_run
from tests import replies
from tests.fake_ollama import _tokens
from tests.test_search_e2e import DIAGNOSIS, by_role, read_records, run_args, run_with_toml

pytestmark = pytest.mark.slow
SMALL = ("--train-samples", "1500", "--test-samples", "300")


def edit_run(fake_ollama, data_dir: Path, tmp_path: Path, edit_format: str,
             generator: list[str]) -> tuple[list[dict], Path, list[str]]:
    """A run of len(generator) iterations under `edit_format`: its records, its folder and the
    user messages of its Prompt Improver calls."""
    server = fake_ollama(default=by_role(generator, DIAGNOSIS[:len(generator)]))
    results = tmp_path / "results"
    args = run_args(server, data_dir, results, edit_format, len(generator))
    run_with_toml(args, f'edit_format = "{edit_format}"\n', tmp_path, *SMALL)
    improver = [b["messages"][-1]["content"] for b in server.chat_requests() if b.get("format")]
    return read_records(results / edit_format), results / edit_format, improver


def code_of(run_dir: Path, record: dict) -> str:
    return (run_dir / record["code_file"]).read_text()


def test_search_replace_edits_make_the_expected_files(fake_ollama, fashion_data_dir, tmp_path):
    generator = [replies.VALID_NET, replies.SR_MATCHES_TWICE, replies.SR_TWO_BLOCKS,
                 replies.SR_WHITESPACE_DRIFT, replies.SR_ONE_BLOCK]
    records, run_dir, improver = edit_run(fake_ollama, fashion_data_dir, tmp_path,
                                          "search-replace", generator)
    assert [r["status"] for r in records] == [fc.OK, fc.EDIT_ERROR, fc.OK, fc.OK, fc.OK]
    first, twice, two, drift, one = records
    assert first["edit"]["kind"] == "whole"  # no code yet: the whole-file prompt
    assert "SEARCH/REPLACE" not in first["prompts"]["generator"][-1]["content"]
    # The block that matches twice is refused, nothing evaluated; the Improver sees why.
    assert twice["code_file"] is None and twice["edit"]["applied"] is False
    assert "matches 2 places" in twice["error"]["message"]
    assert "nn.MaxPool2d(2)" in twice["error"]["message"]
    assert "failed with edit_error: block 1 [nn.ReLU(inplace=True)," in improver[1]
    assert (run_dir / twice["edit"]["file"]).read_text().startswith("<<<<<<< SEARCH\n")
    # Two blocks, applied to the reference (iteration 1, the only success so far).
    assert two["edit"] | {"file": None} == {
        "format": "search-replace", "kind": "edit", "base_iteration": 1, "blocks": 2,
        "applied": True, "lines": 13, "file": None}
    assert "Edit the best architecture so far (iteration 1)" in \
        two["prompts"]["generator"][-1]["content"]
    assert code_of(run_dir, two) == replies.VALID_NET.rstrip("\n").replace(
        "        self.pool = nn.AdaptiveAvgPool2d(1)\n",
        "        self.pool = nn.AdaptiveAvgPool2d(1)\n        self.dropout = nn.Dropout(0.2)\n"
    ).replace("return self.classifier(x)", "return self.classifier(self.dropout(x))")
    # Blocks written flush left (and with a trailing space) land re-indented on the reference.
    best = {r["iteration"]: r for r in records}
    base = drift["edit"]["base_iteration"]
    assert base == two["best_iteration"]
    assert code_of(run_dir, drift) == code_of(run_dir, best[base]).replace(
        "nn.Conv2d(16, 32, kernel_size=3", "nn.Conv2d(16, 48, kernel_size=3").replace(
        "nn.BatchNorm2d(32)", "nn.BatchNorm2d(48)").replace(
        "nn.Linear(32, num_classes)", "nn.Linear(48, num_classes)")
    base = one["edit"]["base_iteration"]
    assert base == drift["best_iteration"]
    assert code_of(run_dir, one) == code_of(run_dir, best[base]).replace(
        "nn.AdaptiveAvgPool2d(1)", "nn.AdaptiveMaxPool2d(1)")
    # The novelty filter judged the code that resulted, a near-copy of its base, not the
    # three-line edit.
    assert one["novelty"]["max_similarity"] > 0.8
    # The report's figures: 5 replies, 4 of them edits (3 applied), 1 whole file; the 4 codes
    # that came out are all valid.
    tokens = sum(len(_tokens(reply)) for reply in generator) / len(generator)
    report = build_report([read_run(run_dir)], write=False)
    assert report.metrics["runs"][0]["edit_formats"] == {"search-replace": {
        "replies": 5, "tokens_per_reply": tokens, "edits": 4, "edits_applied": 3,
        "edit_apply_rate": 0.75, "whole": 1, "applied": 4, "valid": 4, "valid_rate": 1.0}}
    assert (f"| search-replace | 5 | {tokens:,.0f} | 75.0% (3 of 4) | 1 | 100.0% (4 of 4) |"
            in report.markdown)


def test_udiff_edits_a_failed_code_and_takes_a_whole_net(fake_ollama, fashion_data_dir,
                                                          tmp_path):
    records, run_dir, improver = edit_run(fake_ollama, fashion_data_dir, tmp_path, "udiff", [
        replies.VALID_NET, replies.prose_wrapped(replies.SHAPE_MISMATCH_NET),
        replies.UDIFF_FIX_FAILED, replies.UDIFF_MISSING_CONTEXT,
        replies.prose_wrapped(replies.VALID_NET_WIDER)])
    assert [r["status"] for r in records] == [fc.OK, fc.SHAPE_ERROR, fc.OK, fc.EDIT_ERROR, fc.OK]
    _, whole, fixed, missing, wider = records
    # A complete Net where a diff was asked for is taken as is.
    assert whole["edit"]["kind"] == "whole" and whole["edit"]["applied"] is True
    assert code_of(run_dir, whole) == replies.SHAPE_MISMATCH_NET.rstrip("\n")
    # After the failure, the diff edits the failed code, not the reference.
    assert fixed["edit"]["base_iteration"] == 2
    assert "Edit the architecture of the last iteration (iteration 2), which failed" in \
        fixed["prompts"]["generator"][-1]["content"]
    assert code_of(run_dir, fixed) == replies.SHAPE_MISMATCH_NET.rstrip("\n").replace(
        "nn.Linear(64 * 8 * 8, 128)", "nn.Linear(64 * 7 * 7, 128)")
    # A hunk whose context is not in the code is refused; the message and the Improver's
    # prompt name the block and the nearest text.
    message = missing["error"]["message"]
    assert message.startswith("block 1 [nn.Conv2d(32, 64, kernel_size=3")
    assert "nearest text there" in message and "nn.Conv2d(" in message.split("nearest")[1]
    assert missing["code_file"] is None
    assert "failed with edit_error: block 1 [nn.Conv2d(32, 64" in improver[3]
    assert wider["edit"]["kind"] == "whole"
    assert code_of(run_dir, wider) == replies.VALID_NET_WIDER.rstrip("\n")
