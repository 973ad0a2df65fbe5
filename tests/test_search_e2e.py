"""`orchestrator run --sandbox local` end to end on real Fashion-MNIST with a scripted LLM."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import outcomes as fc
from orchestrator.store.record import IterationRecord
from orchestrator.store.records import summarize
from tests import replies
from tests.fake_ollama import FAKE_VERSION, ModelSpec, Reply
from tests.helpers import flat
from tests.test_journal import record_shape_errors

pytestmark = pytest.mark.slow
DIAGNOSIS = [replies.diagnosis_json(f"problem {i}", f"idea {i}", f"suggestion number {i}")
             for i in range(20)]
# The schema's grammar keeps every finished diagnosis JSON of the schema (llm/server.go,
# Completion), so a real server's unusable diagnosis is one cut short: a thinking Improver whose
# trace runs past num_predict (think_tokens included: 6,144 tokens) is stopped there with
# done_reason "length" before it writes any of it.
THINKING_IMPROVER = {"improver:test": ModelSpec(thinking=True)}


def cut_diagnosis(i: int) -> Reply:
    """DIAGNOSIS[i] after a 10,000-token trace: the Improver's reply is cut in the trace."""
    return Reply(content=DIAGNOSIS[i], thinking="Let me weigh the options. " * 2000)


def by_role(generator: list, improver: list) -> Callable[[dict], Reply]:
    """Answer generator and improver calls from their own scripts (the improver asks JSON)."""
    queues = {"generator": list(generator), "improver": list(improver)}

    def respond(body: dict) -> Reply:
        item = queues["improver" if body.get("format") else "generator"].pop(0)
        return item(body) if callable(item) else (
            item if isinstance(item, Reply) else Reply(content=item))

    return respond


def orchestrator(*args: str, scratch: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """`orchestrator run ARGS` in a subprocess, with `env` added to the environment; its
    sandboxes' folders go under `scratch`."""
    env = {**os.environ, **({"TMPDIR": str(scratch)} if scratch else {}), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def run_args(server, data_dir: Path, results: Path, name: str, iterations: int) -> list[str]:
    return ["--dataset", "fashionmnist", "--iterations", str(iterations), "--sandbox", "local",
            "--generator-model", "coder:test", "--improver-model", "improver:test",
            "--ollama-host", server.url, "--data-dir", str(data_dir), "--results-dir",
            str(results), "--name", name, "--train-samples", "6000", "--test-samples", "500",
            "--device", "cpu", "--timeout", "300", "--memory", "4g", "--seed", "42"]


def run_with_toml(args: list[str], toml: str, tmp_path: Path, *extra: str) -> str:
    """`orchestrator run ARGS --config run.toml EXTRA` with `toml` as the file; its output,
    after checking it succeeded."""
    config = tmp_path / "run.toml"
    config.write_text(toml)
    proc = orchestrator(*args, *extra, "--config", str(config))
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    return output


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "iterations.jsonl").read_text().splitlines()]


def user_message(body: dict) -> str:
    return body["messages"][-1]["content"]


GENERATED = [
    (replies.VALID_NET, fc.OK),
    (replies.SHAPE_MISMATCH_NET, fc.SHAPE_ERROR),
    (replies.SYNTAX_ERROR_REPLY, fc.SYNTAX_ERROR),
    (replies.NO_CODE_REPLY, fc.EXTRACT_ERROR),
    (replies.NO_NET_CLASS, fc.CONTRACT_ERROR),
    (replies.NAN_NET, fc.NAN_LOSS),
    (replies.RUNTIME_ERROR_NET, fc.RUNTIME_ERROR),
    (replies.prose_wrapped(replies.VALID_NET_WIDER), fc.OK),
    (replies.WRONG_OUTPUT_NET, fc.SHAPE_ERROR),
]


def test_full_run_journals_every_outcome(fake_ollama, fashion_data_dir, tmp_path):
    generator = [code for code, _ in GENERATED]
    generator[7:7] = [Reply(status=503, error="overloaded")] * 2  # a 5xx burst, retried
    improver = [*DIAGNOSIS[:4], cut_diagnosis(4), *DIAGNOSIS[5:9]]
    server = fake_ollama(specs=THINKING_IMPROVER, default=by_role(generator, improver))
    proc = orchestrator(*run_args(server, fashion_data_dir, tmp_path, "e2e", len(GENERATED)))
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    run_dir = tmp_path / "e2e"
    records = read_records(run_dir)

    assert [r["iteration"] for r in records] == list(range(1, 10)), output
    assert [r["status"] for r in records] == [status for _, status in GENERATED]
    ok = [r for r in records if r["status"] == fc.OK]
    assert all(r["accuracy"] > 0.15 for r in ok), [r["accuracy"] for r in ok]  # chance: 0.1
    assert all(r["accuracy"] is None and r["error"]["message"] for r in records
               if r["status"] != fc.OK)
    best = max(ok, key=lambda r: r["accuracy"])
    assert records[-1]["best_iteration"] == best["iteration"]
    assert (run_dir / "best.py").read_text() == (run_dir / best["code_file"]).read_text()
    assert json.loads((run_dir / "summary.json").read_text()) == summarize(records)
    assert records[3]["code_file"] is None  # no code in the reply, but the reply is kept
    assert (run_dir / records[3]["reply_file"]).read_text() == replies.NO_CODE_REPLY
    for r in records:
        assert set(r["timings"]) == {"generate", "evaluate", "improve"}
        assert r["llm"]["generator"]["completion_tokens"] > 0
        assert record_shape_errors(r, IterationRecord) == [], r["status"]

    # The unusable diagnosis (iteration 5, cut at num_predict) is an llm_error of the
    # improver, not a crash.
    assert "unusable diagnosis" in records[4]["improver_error"]
    assert "improver:test: the reply stopped at num_predict" in flat(output)
    assert records[4]["suggestions"] is None
    assert records[5]["triple"]["problem"] == "no diagnosis available"

    chats = server.chat_requests()
    improver_calls = [b for b in chats if b.get("format")]
    generator_calls = [b for b in chats if not b.get("format")]
    assert len(improver_calls) == 9 and len(generator_calls) == 9 + 2  # two retried 5xx
    # Every Improver prompt carries this iteration's outcome and the earlier ones (K = 5).
    for i, body in enumerate(improver_calls):
        prompt = user_message(body)
        assert records[i]["triple"]["outcome"] in prompt
        for earlier in records[max(0, i - 4):i]:
            assert earlier["triple"]["outcome"] in prompt
        if i >= 5:
            assert records[i - 5]["triple"]["outcome"] not in prompt  # slid out of the window
    # The Generator of iteration i+1 gets the Improver's suggestions of iteration i.
    assert "suggestion number 0" in user_message(generator_calls[1])
    assert "inspiration" not in records[0]["triple"]
    # LLM seed = run seed + call counter; a retried request keeps its seed.
    seeds = [b["options"]["seed"] for b in chats]
    assert sorted(set(seeds)) == list(range(42, 42 + 18))


def test_kill_and_resume_loses_and_repeats_nothing(fake_ollama, fashion_data_dir, tmp_path):
    reached, release = threading.Event(), threading.Event()
    generated = {"count": 0}

    def generate(body: dict) -> Reply:
        generated["count"] += 1
        if generated["count"] == 3:  # iteration 3, first attempt: the run dies here
            reached.set()
            release.wait(60)
        return Reply(content=replies.VALID_NET if generated["count"] % 2 else
                     replies.SHAPE_MISMATCH_NET)

    def respond(body: dict) -> Reply:
        if body.get("format"):
            return Reply(content=DIAGNOSIS[len(server.chat_requests()) % 20])
        return generate(body)

    server = fake_ollama(default=respond)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    args = run_args(server, fashion_data_dir, tmp_path, "crash", 4)
    first = orchestrator(*args, scratch=scratch)
    try:
        assert reached.wait(300), "the run never reached iteration 3"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(60)
    finally:
        release.set()
    run_dir = tmp_path / "crash"
    assert [r["iteration"] for r in read_records(run_dir)] == [1, 2]
    before = read_records(run_dir)

    second = orchestrator(*args, "--resume", scratch=scratch)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    records = read_records(run_dir)
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    assert records[:2] == before
    # The call counter continues from the journal: iteration 3 uses the seeds it would have.
    assert records[2]["llm"]["generator"]["seed"] == 42 + records[1]["llm_calls"]
    assert records[3]["llm_calls"] == 8
    # The memory window survived: iteration 3's Improver saw iterations 1 and 2.
    improver_prompts = [user_message(b) for b in server.chat_requests() if b.get("format")]
    resumed = improver_prompts[2]
    assert records[0]["triple"]["outcome"] in resumed and records[1]["triple"]["outcome"] in resumed
    # The killed run's pre-warmed sandbox cleaned up after itself, and so did the second run.
    assert list(scratch.iterdir()) == []


def test_report_show_and_export_on_a_real_run(fake_ollama, fashion_data_dir, tmp_path):
    generator = [replies.VALID_NET, replies.SHAPE_MISMATCH_NET, replies.VALID_NET_WIDER]
    server = fake_ollama(default=by_role(generator, DIAGNOSIS[:3]))
    proc = orchestrator(*run_args(server, fashion_data_dir, tmp_path, "rep", 3))
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    run_dir = tmp_path / "rep"
    cli = [sys.executable, "-m", "orchestrator"]

    metrics = json.loads(subprocess.run([*cli, "report", str(run_dir), "--json"], check=True,
                                        capture_output=True, text=True).stdout)
    table = metrics["runs"][0]["table2"]
    assert (table["iterations"], table["successful"]) == (3, 2)
    assert table["best_iteration"] == json.loads((run_dir / "summary.json").read_text())[
        "best_iteration"]
    text = subprocess.run([*cli, "report", str(run_dir)], check=True, capture_output=True,
                          text=True).stdout
    assert "Success rate" in text and "66.7%" in text
    assert (run_dir / "report.html").read_text().count("<table") >= 1
    assert (run_dir / "trajectory.png").stat().st_size > 1000

    shown = subprocess.run([*cli, "show", str(run_dir), "2"], check=True, capture_output=True,
                           text=True).stdout
    assert "shape_error" in shown and "suggestion number 0" in shown

    out = tmp_path / "best_net.py"
    subprocess.run([*cli, "export", str(run_dir), "--best", str(out)], check=True)
    built = subprocess.run([sys.executable, "-c", "import importlib.util, torch; "
                            f"s = importlib.util.spec_from_file_location('b', {str(out)!r}); "
                            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
                            "print(tuple(m.Net()(torch.zeros(2, 1, 28, 28)).shape))"],
                           check=True, capture_output=True, text=True).stdout
    assert built.strip() == "(2, 10)"


def test_parallel_chains_share_one_journal(fake_ollama, fashion_data_dir, tmp_path):
    def respond(body: dict) -> Reply:
        if body.get("format"):
            return Reply(content=DIAGNOSIS[1])
        seed = body["options"]["seed"]  # each chain gets its own net, picked by its seeds
        return Reply(content=replies.VALID_NET if seed < 1_000_000 else replies.VALID_NET_WIDER)

    server = fake_ollama(default=respond)
    args = run_args(server, fashion_data_dir, tmp_path, "par", 2)
    proc = orchestrator(*args, "--parallel", "2")
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    records = read_records(tmp_path / "par")
    by_chain = {c: [r for r in records if r["chain"] == c] for c in (0, 1)}
    assert [r["iteration"] for r in by_chain[0]] == [1, 2]
    assert [r["iteration"] for r in by_chain[1]] == [1, 2]
    assert all(r["status"] == fc.OK for r in records)
    assert [r["llm"]["generator"]["seed"] for r in by_chain[1]] == [1_000_042, 1_000_044]
    assert {r["code_file"] for r in records} == {
        f"candidates/c{c}_iter_000{i}.py" for c in (0, 1) for i in (1, 2)}
    # Chain 1's second net repeats its first: the novelty record says so.
    assert by_chain[1][1]["novelty"]["max_similarity"] == 1.0
    assert by_chain[1][1]["novelty"]["nearest_chain"] == 1
    summary = json.loads((tmp_path / "par" / "summary.json").read_text())
    assert summary["iterations"] == 4 and summary["successful"] == 4
    assert summary["iterations_per_chain"] == {"0": 2, "1": 2}
    # --iterations is per chain, and the start line says what that adds up to.
    assert "2 chains x 2 iterations each = 4 evaluated designs" in flat(output)


def test_novelty_reject_regenerates_and_skips_duplicates(fake_ollama, fashion_data_dir,
                                                         tmp_path):
    generator = [replies.VALID_NET, replies.VALID_NET, replies.prose_wrapped(replies.VALID_NET),
                 replies.VALID_NET_WIDER]
    server = fake_ollama(default=by_role(generator, DIAGNOSIS[:3]))
    run_with_toml(run_args(server, fashion_data_dir, tmp_path, "nov", 3),
                  "[run]\nnovelty = 'reject'\nnovelty-retries = 1\n", tmp_path)
    records = read_records(tmp_path / "nov")
    assert [r["status"] for r in records] == [fc.OK, fc.DUPLICATE, fc.OK]
    duplicate = records[1]
    assert duplicate["timings"]["evaluate"] == 0.0  # no sandbox time spent on it
    assert "near-duplicate of iteration 1" in duplicate["error"]["message"]
    assert [r["max_similarity"] for r in duplicate["novelty"]["rejected"]] == [1.0, 1.0]
    assert "failed with duplicate" in duplicate["triple"]["outcome"]
    temperatures = [b["options"]["temperature"] for b in server.chat_requests()
                    if not b.get("format")]
    assert temperatures == [0.7, 0.7, pytest.approx(0.8), 0.7]


def test_novelty_reject_lets_a_one_token_repair_through(fake_ollama, fashion_data_dir, tmp_path):
    """The fix of a shape error is a near-copy of the broken net (Jaccard about 0.90); only
    code that worked may make a later candidate a duplicate, so the repair is evaluated."""
    fixed = replies.SHAPE_MISMATCH_NET.replace("nn.Linear(64 * 8 * 8, 128)",
                                               "nn.Linear(64 * 7 * 7, 128)")
    server = fake_ollama(default=by_role([replies.SHAPE_MISMATCH_NET, fixed], DIAGNOSIS[:2]))
    proc = orchestrator(*run_args(server, fashion_data_dir, tmp_path, "repair", 2),
                        "--novelty", "reject")
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    broken, repaired = read_records(tmp_path / "repair")
    assert (broken["status"], repaired["status"]) == (fc.SHAPE_ERROR, fc.OK)
    assert repaired["novelty"]["rejected"] == []


def test_lone_surrogates_and_nul_bytes_in_replies_are_journaled(fake_ollama, fashion_data_dir,
                                                                tmp_path):
    # JSON escapes for lone surrogates decode to text that cannot be encoded as UTF-8; a
    # broken or hostile server can send them in code and in the diagnosis.
    odd_net = replies.VALID_NET.replace("import torch\n", "import torch  # \ud800\n", 1)
    nul_code = "```python\nimport torch\x00\nclass Net: pass\n```"
    odd_diagnosis = replies.diagnosis_json("why \ud800", "idea", "try \udfff")
    server = fake_ollama(default=by_role([odd_net, nul_code], [odd_diagnosis, DIAGNOSIS[1]]))
    proc = orchestrator(*run_args(server, fashion_data_dir, tmp_path, "odd", 2))
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    first, second = read_records(tmp_path / "odd")
    assert (first["status"], second["status"]) == (fc.OK, fc.SYNTAX_ERROR)
    assert first["suggestions"]["reason"] == "why \ufffd"
    assert first["suggestions"]["suggestions"] == "try \ufffd"
    code = (tmp_path / "odd" / first["code_file"]).read_text(encoding="utf-8")
    assert "import torch  # \ufffd" in code
    assert "null bytes" in second["error"]["message"]


SABOTAGE_NET = replies.VALID_NET.replace("import torch.nn as nn\n", '''import torch.nn as nn
import os

# The local sandbox runs as the user: replace the sandboxes' scratch folder by a file.
_scratch = os.path.dirname(os.path.dirname(os.environ["HOME"]))
os.rename(_scratch, _scratch + ".moved")
open(_scratch, "w").close()
''', 1)


def test_a_broken_sandbox_stops_the_run_after_a_streak_of_faults(fake_ollama, fashion_data_dir,
                                                                 tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    server = fake_ollama(default=by_role([SABOTAGE_NET] + [replies.VALID_NET] * 9, DIAGNOSIS))
    proc = orchestrator(*run_args(server, fashion_data_dir, tmp_path, "broken", 10),
                        scratch=scratch)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 3, output
    assert "5 infrastructure faults in a row (iteration 2)" in output
    assert "orchestrator run --name broken --resume" in output
    records = read_records(tmp_path / "broken")
    # The saboteur broke its own sandbox (its supervisor could not report): its fault. The
    # sandboxes after it have no folder to work in: infrastructure faults.
    assert [r["status"] for r in records] == [fc.RUNTIME_ERROR] + [fc.SANDBOX_ERROR] * 5
    # The lost attempts are iteration 2, tried five times.
    assert [(r["iteration"], r["attempt"]) for r in records] == [(1, 1)] + [
        (2, k) for k in range(1, 6)]
    # Which fault depends on timing: a sandbox started later cannot make its folder; one
    # pre-warmed while the folder moved away ends before READY, or its runner reports it.
    messages = [r["error"]["message"] for r in records[1:]]
    faults = ("local sandbox failed: ", "the sandbox ended while warming up", "the runner failed")
    assert all(m.startswith(faults) for m in messages), messages
    assert len([b for b in server.chat_requests() if not b.get("format")]) == 6
    assert scratch.is_file()  # the sabotage did happen


def test_an_ollama_before_0_5_gets_json_mode_for_the_diagnosis(fake_ollama, fashion_data_dir,
                                                              tmp_path):
    # JSON mode's grammar (grammarJSON) allows any object: other keys, a list of suggestions.
    server = fake_ollama(version="0.4.7", default=by_role([replies.VALID_NET],
                                                          [replies.DIAGNOSIS_LIST_SUGGESTIONS]))
    # As on a terminal (rich's TTY_COMPATIBLE): each slow phase shows a spinner while it runs.
    proc = orchestrator(*run_args(server, fashion_data_dir, tmp_path, "old", 1),
                        env={"TTY_COMPATIBLE": "1"})
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    assert all(f"[1/1] {phase}…" in output for phase in ("generating", "evaluating",
                                                        "improving")), output
    assert "predates structured outputs" in output
    improver = [b for b in server.chat_requests() if b.get("format")]
    assert [b["format"] for b in improver] == ["json"]
    (record,) = read_records(tmp_path / "old")
    assert record["suggestions"]["suggestions"].split("\n") == [
        "1. Add a third conv stage with 128 channels.", "2. Use two 3x3 convolutions per stage.",
        "3. Add dropout 0.3 before the classifier."]
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    assert config["ollama_version"] == "0.4.7"


def test_a_full_disk_stops_the_run_cleanly_and_resume_completes(fake_ollama, fashion_data_dir,
                                                                tmp_path):
    # Replies to spare: the refused commit spent one, how many depends on the records' sizes.
    server = fake_ollama(default=by_role([replies.VALID_NET] * 8, DIAGNOSIS))
    first = orchestrator(*run_args(server, fashion_data_dir, tmp_path, "full", 1))
    assert first.communicate(timeout=900)[0] and first.returncode == 0  # caches the subset
    args = run_args(server, fashion_data_dir, tmp_path, "full", 4)
    journal = tmp_path / "full" / "iterations.jsonl"
    limit = journal.stat().st_size * 5 // 2  # room for at most one more record, not three

    def small_files() -> None:  # the kernel refuses to grow any file past `limit` bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    second = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", *args, "--resume"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=small_files)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 3, output
    assert "cannot write the journal" in output and "File too large" in output
    assert "--resume" in output
    data = journal.read_bytes()
    assert data.endswith(b"\n") and len(data) <= limit  # the failed line was cut off again
    saved = [r["iteration"] for r in read_records(tmp_path / "full")]
    assert saved == list(range(1, len(saved) + 1)) and len(saved) < 4

    third = orchestrator(*args, "--resume")
    output, _ = third.communicate(timeout=900)
    assert third.returncode == 0, output
    assert [r["iteration"] for r in read_records(tmp_path / "full")] == [1, 2, 3, 4]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_the_runner_cannot_set_up_stops_the_run(fake_ollama, fashion_data_dir, tmp_path):
    """--device cuda without a GPU: every warm runner fails in its device phase, before any
    candidate code. Five sandbox_errors, exit 3; the Improver never hears of them."""
    server = fake_ollama(default=by_role([replies.VALID_NET] * 8, DIAGNOSIS))
    args = run_args(server, fashion_data_dir, tmp_path, "nocuda", 8)
    args[args.index("--device") + 1] = "cuda"
    proc = orchestrator(*args)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 3, output
    assert "5 infrastructure faults in a row (iteration 1)" in output
    records = read_records(tmp_path / "nocuda")
    assert [(r["status"], r["phase"]) for r in records] == [(fc.SANDBOX_ERROR, "device")] * 5
    assert all("warming up" in r["error"]["message"] for r in records)
    assert not [b for b in server.chat_requests() if b.get("format")]  # no diagnosis asked


def test_data_torn_mid_run_stops_it_and_resume_completes(fake_ollama, fashion_data_dir,
                                                        tmp_path):
    """The subset's training images are torn once the run has started (after the host checked
    the cache): runner faults in phase data, exit 3; repaired, --resume completes the run."""
    first = orchestrator(*run_args(fake_ollama(default=by_role([replies.VALID_NET], DIAGNOSIS)),
                                   fashion_data_dir, tmp_path, "warm", 1))
    assert first.communicate(timeout=900)[0] and first.returncode == 0  # caches the subset
    images = fashion_data_dir / "fashionmnist" / "subsets" / "6000-500-42" / "holdout" / \
        "0.1-42" / "sandbox" / "train_x.npy"  # run_args's subset, less its validation split
    intact = images.read_bytes()

    tear = threading.Event()
    tear.set()

    def generate(body: dict) -> Reply:
        if not body.get("format") and tear.is_set():
            images.write_bytes(intact[: len(intact) // 2])  # before this iteration's runner
        return by_role([replies.VALID_NET], [DIAGNOSIS[0]])(body)

    server = fake_ollama(default=generate)
    args = run_args(server, fashion_data_dir, tmp_path, "torn", 2)
    try:
        proc = orchestrator(*args, "--warm-pool", "0")  # each runner starts after generation
        output, _ = proc.communicate(timeout=900)
    finally:
        tear.clear()
        images.write_bytes(intact)
    assert proc.returncode == 3, output
    assert "--resume" in output
    records = read_records(tmp_path / "torn")
    assert [(r["status"], r["phase"]) for r in records] == [(fc.SANDBOX_ERROR, "data")] * 5
    assert "cannot load data" in records[0]["error"]["message"]
    assert not [b for b in server.chat_requests() if b.get("format")]

    again = orchestrator(*args, "--resume")
    output, _ = again.communicate(timeout=900)
    assert again.returncode == 0, output
    records = read_records(tmp_path / "torn")
    # Five lost attempts at iteration 1 did not count: the run still has its two designs.
    assert [r["status"] for r in records] == [fc.SANDBOX_ERROR] * 5 + [fc.OK] * 2
    # The faults stayed out of the memory: the Improver's first window holds no sandbox_error.
    improver = [user_message(b) for b in server.chat_requests() if b.get("format")]
    assert improver and all("sandbox_error" not in prompt for prompt in improver)


def test_a_prompt_improver_that_keeps_failing_stops_the_run(fake_ollama, fashion_data_dir,
                                                            tmp_path):
    """Unusable diagnoses (each cut at num_predict), iteration after iteration: without the
    Improver the run would silently be the --no-improver ablation. They are counted, shown and
    stop it (exit 3)."""
    server = fake_ollama(specs=THINKING_IMPROVER, default=by_role(
        [replies.VALID_NET] * 8, [cut_diagnosis(i) for i in range(8)]))
    proc = orchestrator(*run_args(server, fashion_data_dir, tmp_path, "mute", 8))
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 3, output
    assert "5 infrastructure faults in a row (iterations 1-5), the last: the Prompt Improver " \
           "failed: unusable diagnosis" in flat(output)
    assert "improver errors 5" in output and "--resume" in output
    records = read_records(tmp_path / "mute")
    assert [r["status"] for r in records] == [fc.OK] * 5  # the designs themselves were fine
    assert all(r["improver_error"] for r in records)


def test_a_reasoning_model_thinks_only_where_asked(fake_ollama, fashion_data_dir, tmp_path):
    """The Generator's thinking is off by default; the Improver's is on here. Its trace comes
    apart from the answer and does not spend the answer's num_predict."""
    think = Reply(content=DIAGNOSIS[0], thinking="Let me weigh the options. " * 50)
    server = fake_ollama(thinking=True, default=by_role([replies.VALID_NET], [think]))
    run_with_toml(run_args(server, fashion_data_dir, tmp_path, "think", 1),
                  "[run]\nimprover-think = true\n", tmp_path)
    generator, improver = server.chat_requests()
    assert generator["think"] is False and improver["think"] is True
    assert (generator["options"]["num_predict"], improver["options"]["num_predict"]) == (
        2048, 2048 + 4096)
    (record,) = read_records(tmp_path / "think")
    assert record["status"] == fc.OK and record["suggestions"]["suggestions"] == \
        "suggestion number 0"


def test_a_prompt_past_the_models_context_drops_its_least_important_parts(
        fake_ollama, fashion_data_dir, tmp_path):
    """A model with a 4096-token context: the extended prompt would not fit with a 2048-token
    reply, and Ollama would cut it silently. The loop drops the lowest-ranked top-k entries
    first, then older attempts, and journals what it dropped."""
    nets = [replies.VALID_NET, replies.VALID_NET_WIDER] * 2
    server = fake_ollama(context_length=4096, default=by_role(nets, DIAGNOSIS[:4]))
    proc = orchestrator(*run_args(server, fashion_data_dir, tmp_path, "small", 4),
                        "--extended-prompt")
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    for body in server.chat_requests():  # every prompt fits: ceil(chars / 3) + 2048 <= 4096
        assert sum(len(m["content"]) for m in body["messages"]) / 3 + 2048 <= 4096
        assert body["options"]["num_ctx"] == 4096
    records = read_records(tmp_path / "small")
    assert "prompt_dropped" not in records[0]["llm"]["generator"]  # nothing to drop yet
    dropped = records[3]["llm"]["generator"]["prompt_dropped"]
    assert dropped[0].startswith("top architecture"), dropped
    assert all(r["status"] == fc.OK for r in records)


# -- several Ollama servers ------------------------------------------------------------------

def by_seed(body: dict) -> Reply:
    """Chain 0 writes VALID_NET, chain 1 VALID_NET_WIDER (told apart by their seeds)."""
    if body.get("format"):
        return Reply(content=DIAGNOSIS[1])
    seed = body["options"]["seed"]
    return Reply(content=replies.VALID_NET if seed < 1_000_000 else replies.VALID_NET_WIDER)


def hosts_of(records: list[dict], chain: int) -> list[tuple[str, str]]:
    """(generator host, improver host) of each of the chain's records, in order."""
    return [(r["llm"]["generator"]["host"], r["llm"]["improver"]["host"]) for r in records
            if r["chain"] == chain]


def test_chains_are_spread_over_the_servers_of_a_toml_list_and_resume_on_others(
        fake_ollama, fashion_data_dir, tmp_path):
    a, b = fake_ollama(default=by_seed), fake_ollama(default=by_seed)
    args = run_args(a, fashion_data_dir, tmp_path, "spread", 1)
    at = args.index("--ollama-host")
    del args[at:at + 2]  # the servers come from the TOML file
    run_with_toml(args, f'[run]\nollama-host = ["{a.url}", "{b.url}"]\n', tmp_path,
                  "--parallel", "2")
    records = read_records(tmp_path / "spread")
    assert hosts_of(records, 0) == [(a.url, a.url)]
    assert hosts_of(records, 1) == [(b.url, b.url)]
    assert {body["options"]["seed"] for body in b.chat_requests()} == {1_000_042, 1_000_043}
    stored = json.loads((tmp_path / "spread" / "config.json").read_text())
    assert stored["ollama_host"] == [a.url, b.url]
    assert stored["ollama_servers"] == {a.url: FAKE_VERSION, b.url: FAKE_VERSION}

    # Resumed with another list of servers: B alone takes both chains.
    again = orchestrator(*args, "--parallel", "2", "--iterations", "2", "--ollama-host", b.url,
                         "--resume")
    output, _ = again.communicate(timeout=900)
    assert again.returncode == 0, output
    records = read_records(tmp_path / "spread")
    assert all(r["status"] == fc.OK for r in records) and len(records) == 4
    assert hosts_of(records, 0) == [(a.url, a.url), (b.url, b.url)]
    assert hosts_of(records, 1) == [(b.url, b.url), (b.url, b.url)]
    assert json.loads((tmp_path / "spread" / "config.json").read_text())["ollama_host"] == b.url


def test_attempts_an_outage_lost_are_made_up_and_counted_apart(fake_ollama, fashion_data_dir,
                                                              tmp_path):
    """The Ollama server is killed while iteration 3 of 6 is generated: five lost attempts
    stop the run (exit 3), and --resume against the restarted server completes it. Every design
    the server sent was valid, so the run has 6 iterations, all successful; the five attempts
    the outage lost are history, counted apart."""
    first: dict[str, object] = {}

    def dies_at_the_third_design(body: dict) -> Reply:
        server = first["server"]
        if not body.get("format") and len(generator_requests(server)) == 3:
            server.close()  # drops this very connection too: the reply never arrives
        return Reply(content=DIAGNOSIS[0] if body.get("format") else replies.VALID_NET)

    server = first["server"] = fake_ollama(default=dies_at_the_third_design)
    args = run_args(server, fashion_data_dir, tmp_path, "outage", 6)
    proc = orchestrator(*args)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 3, output
    assert "5 infrastructure faults in a row (iteration 3)" in flat(output)
    assert "2 iterations are saved" in flat(output)

    restarted = fake_ollama(default=by_role([replies.VALID_NET] * 4, DIAGNOSIS))
    args[args.index(server.url)] = restarted.url
    again = orchestrator(*args, "--resume")
    output, _ = again.communicate(timeout=900)
    assert again.returncode == 0, output
    assert "done: 6/6 successful" in output and "5 attempts lost to faults" in flat(output)
    records = read_records(tmp_path / "outage")
    assert [(r["iteration"], r["attempt"]) for r in records] == [
        (1, 1), (2, 1), *[(3, k) for k in range(1, 7)], (4, 1), (5, 1), (6, 1)]
    assert [r["status"] for r in records] == [fc.OK] * 2 + [fc.LLM_ERROR] * 5 + [fc.OK] * 4
    summary = json.loads((tmp_path / "outage" / "summary.json").read_text())
    assert (summary["iterations"], summary["successful"], summary["success_rate"]) == (6, 6, 1)
    assert summary["lost"] == {fc.LLM_ERROR: 5}
    assert len(generator_requests(restarted)) == 4  # the outage cost no design


def generator_requests(server) -> list[dict]:
    return [b for b in server.chat_requests() if not b.get("format")]


def test_a_server_that_dies_mid_run_hands_its_chain_to_the_other(fake_ollama,
                                                                 fashion_data_dir, tmp_path):
    servers: dict[str, object] = {}

    def b_dies_at_its_third_request(body: dict) -> Reply:
        if len(servers["b"].chat_requests()) == 3:  # chain 1, iteration 2, the generator
            servers["b"].close()  # drops this very connection too: the reply never arrives
        return by_seed(body)

    a = fake_ollama(default=by_seed)
    b = servers["b"] = fake_ollama(default=b_dies_at_its_third_request)
    args = run_args(a, fashion_data_dir, tmp_path, "failover", 3)
    proc = orchestrator(*args, "--ollama-host", b.url, "--parallel", "2")
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    assert f"the Ollama server at {b.url} is unreachable" in flat(output)
    records = read_records(tmp_path / "failover")
    assert len(records) == 6 and all(r["status"] == fc.OK for r in records), \
        [(r["status"], r["error"]) for r in records]
    assert all(r["improver_error"] is None for r in records)
    assert hosts_of(records, 0) == [(a.url, a.url)] * 3
    assert hosts_of(records, 1) == [(b.url, b.url), (a.url, a.url), (a.url, a.url)]
    # Chain 1's seeds are unbroken across the move: the failed-over call kept its seed.
    assert [r["llm"]["generator"]["seed"] for r in records if r["chain"] == 1] == [
        1_000_042, 1_000_044, 1_000_046]
    moved = [body["options"]["seed"] for body in a.chat_requests()
             if body["options"]["seed"] >= 1_000_000]
    assert moved == [1_000_044, 1_000_045, 1_000_046, 1_000_047]
