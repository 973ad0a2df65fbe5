"""`orchestrator cycles` end to end: real searches (local sandbox, Fashion-MNIST subset) against
the scripted Ollama server, real LoRA fine-tuning of a tiny random-weight Qwen2, real merges,
and the blob uploads and creates checked on the server; kill -9 in cycle 1's search, its
fine-tuning, mid-way through writing its merge, after its merge and at its model's creation,
each followed by --resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orchestrator import outcomes as fc
from tests import replies
from tests.fake_ollama import Reply

pytest.importorskip("peft", reason="NOT TESTED: the [finetune] extra is not installed")
pytestmark = pytest.mark.slow

# One cycle's replies: two designs that train, one that fails.
CYCLE = [replies.VALID_NET, replies.VALID_NET_WIDER, replies.SHAPE_MISMATCH_NET]
# The second request is answered after the kill, to no one, and asked again on --resume.
SCRIPT = [CYCLE[0], CYCLE[1], *CYCLE[1:], *CYCLE]


def search_toml(path: Path, server, data_dir: Path) -> Path:
    path.write_text(f"""
dataset = "fashionmnist"
sandbox = "local"
data_dir = "{data_dir}"
train_samples = 6000
test_samples = 500
device = "cpu"
timeout = 300
memory = "4g"
seed = 42
improver_model = "improver:test"
ollama_host = "{server.url}"
""")
    return path


# Runs the CLI with an audit hook that SIGKILLs the process as it opens a file for writing in
# a merge's staging folder that already holds the merged weights: the folder is mid-write,
# the tokenizer and the finished-merge marker not yet written (Python's `open` audit event).
KILL_MID_MERGE = """
import os, runpy, signal, sys
from pathlib import Path

def hook(event, args):
    if event == "open" and isinstance(args[1], str) and set(args[1]) & set("wxa"):
        folder = Path(os.fsdecode(args[0])).parent
        if folder.name.endswith(".merged.tmp") and any(folder.glob("*.safetensors")):
            os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(hook)
sys.argv[0] = "orchestrator"
runpy.run_module("orchestrator", run_name="__main__", alter_sys=True)
"""


def cycles(*args: str, results: Path, kill_mid_merge: bool = False) -> subprocess.Popen:
    entry = ["-c", KILL_MID_MERGE] if kill_mid_merge else ["-m", "orchestrator"]
    return subprocess.Popen(
        [sys.executable, *entry, "cycles", "--results-dir", str(results), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TMPDIR": str(results), "PYTHONUNBUFFERED": "1"})


def output_until(proc: subprocess.Popen, marker: str | None = None,
                 timeout: float = 1800) -> str:
    """The process's output to its end; SIGKILL as soon as it prints a line holding `marker`
    (the line comes after what it announces is done: the kill lands in the step after it)."""
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if marker is not None and marker in line:
                proc.kill()
    finally:
        watchdog.cancel()
    proc.wait()
    return "".join(lines)


def log(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "cycles.jsonl").read_text().splitlines()]


def test_two_cycles_survive_kills_and_publish_each_model_once(fake_ollama, fashion_data_dir,
                                                               tiny_lm, tmp_path):
    driver: list[subprocess.Popen] = []
    script = list(SCRIPT)

    def generate(body: dict) -> Reply:
        """Each cycle gets the same three designs. The first cycles process is killed
        (SIGKILL; its search follows through its death signal) at the second request."""
        if len(script) == len(SCRIPT) - 1:
            driver[0].kill()
        return Reply(content=script.pop(0))

    def created(name: str) -> None:
        """The fifth cycles process is killed as the server finishes creating cycle 1's
        model, before it can journal the publish."""
        if name == "coder-nas:c1" and len(driver) == 5:
            driver[4].kill()

    def blob_checked(digest: str) -> None:
        """The fourth cycles process is killed as it checks its first merged file on the
        server: the merge is done, nothing uploaded or created yet."""
        if len(driver) == 4:
            driver[3].kill()

    server = fake_ollama(default=generate)
    server.on_created = created
    server.on_blob_check = blob_checked
    config = search_toml(tmp_path / "search.toml", server, fashion_data_dir)
    results = tmp_path / "results"
    args = ["--name", "nas", "--config", str(config), "--base-model", str(tiny_lm),
            "--base-tag", "coder:test", "--cycles", "2", "--candidates", "3",
            "--threshold", "0.3", "--epochs", "2", "--lr", "0.005", "--rank", "4",
            "--alpha", "8"]
    first = cycles(*args, results=results)
    driver.append(first)
    output, _ = first.communicate(timeout=900)
    assert first.returncode == -signal.SIGKILL, output
    root = results / "nas"
    assert not (root / "cycles.jsonl").exists() or not log(root)  # killed inside the search

    # Killed during cycle 1's fine-tuning, once its first checkpoint is saved.
    lora = root / "cycle_01.lora"
    again = cycles("--name", "nas", "--resume", results=results)
    driver.append(again)
    output = output_until(again, "fine-tuning: checkpoint at step 1/")
    assert again.returncode == -signal.SIGKILL, output
    assert [r["step"] for r in log(root)] == ["search", "select"]
    assert list((lora / "checkpoints").glob("checkpoint-*")), output

    # Killed mid-way through writing cycle 1's merge: its weights are in the staging folder,
    # its tokenizer and marker are not, and nothing is in the merged folder yet.
    again = cycles("--name", "nas", "--resume", results=results, kill_mid_merge=True)
    driver.append(again)
    output = output_until(again)
    assert again.returncode == -signal.SIGKILL, output
    assert "fine-tuning: resuming from checkpoint-" in output
    assert "cycle 1: merging the adapter into" in output
    assert [r["step"] for r in log(root)] == ["search", "select", "train", "publishing"]
    staging = root / "cycle_01.merged.tmp"
    assert list(staging.glob("*.safetensors")) and not (staging / ".merged.json").exists()
    assert not list(staging.glob("tokenizer*")) and not (root / "cycle_01.merged").exists()
    assert server.creates() == [] and server.uploads() == []

    # Killed after cycle 1's merge, before its upload: the torn merge is made again whole;
    # fine-tuning is journaled, the publish only begun.
    again = cycles("--name", "nas", "--resume", results=results)
    driver.append(again)
    output = output_until(again)
    assert again.returncode == -signal.SIGKILL, output
    assert "cycle 1: merging the adapter into" in output
    assert [r["step"] for r in log(root)] == ["search", "select", "train", "publishing"]
    assert (root / "cycle_01.merged" / ".merged.json").is_file()
    assert server.creates() == [] and server.uploads() == []

    # Killed as the server creates cycle 1's model.
    again = cycles("--name", "nas", "--resume", results=results)
    driver.append(again)
    output = output_until(again)
    assert again.returncode == -signal.SIGKILL, output
    assert "coder-nas:c1" in server.models and not any(r["step"] == "publish" for r in log(root))

    last = cycles("--name", "nas", "--resume", results=results)
    output = output_until(last)
    assert last.returncode == 0, output
    assert "cycle 1: coder-nas:c1 (" in output
    assert "was published before the run stopped; not publishing it again" in " ".join(
        output.split())

    records = log(root)
    done = [r for r in records if r["step"] == "cycle"]
    assert [r["cycle"] for r in done] == [1, 2]
    assert [r["generator"] for r in done] == ["coder:test", "coder-nas:c1"]
    assert [r["tag"] for r in done] == ["coder-nas:c1", "coder-nas:c2"]
    steps = [(r["cycle"], r["step"]) for r in records]
    assert len(steps) == len(set(steps)), "a step was journaled twice"
    # Cycle 1's fine-tuning went on from its checkpoint: every step of the run trained once
    # (2 examples x 2 epochs), none twice; no merge is left behind.
    trained = json.loads((lora / "train_result.json").read_text())
    assert trained["resumed"] and len(trained["losses"]) == 4, trained
    assert not list(root.glob("cycle_*.merged*"))

    # Each cycle's search: three iterations, nothing lost or duplicated by the kill.
    for cycle in (1, 2):
        run = [json.loads(line) for line in
               (root / f"cycle_{cycle:02d}" / "iterations.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in run] == [1, 2, 3]
        assert [r["status"] for r in run] == [fc.OK, fc.OK, fc.SHAPE_ERROR]
    assert json.loads((root / "cycle_02" / "config.json").read_text())["generator_model"] == \
        "coder-nas:c1"
    assert script == []

    # The corpus: cycle 1 admits the two designs; cycle 2 generates the same ones, which are
    # near-duplicates of the corpus now.
    corpus = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]
    sources = [(e["source"]["cycle"], e["source"]["iteration"]) for e in corpus]
    assert sources == [(1, 1), (1, 2)]
    assert (done[0]["admitted"], done[1]["admitted"]) == (2, 0)
    assert done[1]["duplicates"] == 2 and done[1]["corpus_size"] == 2
    assert all(isinstance(r["train_loss"], float) for r in done)

    # Ollama: every file of each merged model uploaded, then created under the cycle's tag.
    creates = server.creates()  # each model created once, the killed publish included
    assert [c["model"] for c in creates] == ["coder-nas:c1", "coder-nas:c2"]
    blobs = server.blobs()
    for create in creates:  # whole merges: the torn one was never uploaded
        assert {"config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json"} <= set(create["files"]), create["files"]
        assert all(d in blobs for d in create["files"].values())
        assert create.get("quantize") == "q4_K_M"
    assert {"coder-nas:c1", "coder-nas:c2"} <= set(server.models)
    assert done[1]["digest"] != done[0]["digest"]
    # Cycle 2 generated with the published model.
    models = [b["model"] for b in server.chat_requests()]
    assert "coder-nas:c1" in models and "coder-nas:c2" not in models

    # The per-cycle report over the cycles directory.
    report = subprocess.run([sys.executable, "-m", "orchestrator", "report", str(root)],
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    rows = [line for line in report.stdout.splitlines() if line.startswith("| 1 ")
            or line.startswith("| 2 ")]
    assert len(rows) == 2, report.stdout
    assert (root / "cycles.png").stat().st_size > 0
    print(report.stdout)


def test_wrong_settings_and_inputs_are_one_line_errors(tmp_path, tiny_lm):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    def run(*args: str):
        return CliRunner().invoke(app, list(args))

    toml = tmp_path / "s.toml"
    toml.write_text('dataset = "fashionmnist"\n')
    results = str(tmp_path / "results")
    cases = [
        (["cycles", "--name", "x", "--results-dir", results], "need --config, --base-model"),
        (["cycles", "--name", "x", "--resume", "--results-dir", results], "no cycles to resume"),
        (["cycles", "--name", "x", "--config", str(toml), "--base-model", str(tiny_lm),
          "--base-tag", "coder:test", "--mode", "evolve", "--results-dir", results],
         "mode must be one of fixed, feedback"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run("finetune", str(empty), "--base-model", str(tiny_lm), "--out",
                 str(tmp_path / "ft"))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "corpus" in result.output


def test_a_torn_last_step_record_is_cut_before_the_next_append(tmp_path):
    from orchestrator.finetune.cycles import CycleLog

    path = tmp_path / "cycles.jsonl"
    path.write_text('{"cycle": 1, "step": "search"}\n{"cycle": 1, "st')  # killed mid-append
    log = CycleLog(path)
    assert [r["step"] for r in log.records] == ["search"]
    log.add({"cycle": 1, "step": "select"})
    assert [r["step"] for r in CycleLog(path).records] == ["search", "select"]


# -- inputs checked before the first search --------------------------------------------------
def invoke(*args: str):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    result = CliRunner().invoke(app, ["cycles", *args])
    result.flat = " ".join(result.output.split())  # the console wraps long paths
    return result


def seed_file(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD_SEED = json.dumps({"prompt": "A CIFAR-10 net, please.", "code": replies.VALID_NET})


def new_cycles(server, data_dir: Path, tmp_path: Path, base: Path | str, *more: str):
    config = search_toml(tmp_path / "search.toml", server, data_dir)
    return invoke("--name", "nas", "--results-dir", str(tmp_path / "results"), "--config",
                  str(config), "--base-model", str(base), "--base-tag", "coder:test",
                  "--cycles", "1", "--candidates", "1", "--epochs", "1", "--rank", "4",
                  "--alpha", "8", *more)


def test_a_bad_base_model_is_refused_before_the_first_search(fake_ollama, fashion_data_dir,
                                                              tiny_lm, tmp_path):
    server = fake_ollama(default=Reply(content=replies.NO_CODE_REPLY))
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(tiny_lm / "config.json", no_tokenizer)
    seeds = seed_file(tmp_path / "seeds.jsonl", GOOD_SEED)
    for base, message in [("/no/such/folder", "base model /no/such/folder not found"),
                          (no_tokenizer, f"base model folder {no_tokenizer} has no tokenizer")]:
        result = new_cycles(server, fashion_data_dir, tmp_path, base, "--seed-corpus", str(seeds))
        assert result.exit_code == 2 and message in result.flat, result.output
        assert "Traceback" not in result.flat
    assert server.chat_requests() == []  # no search began
    assert not (tmp_path / "results" / "nas").exists()


def test_a_seed_corpus_line_that_is_no_pair_is_refused_naming_file_and_line(
        fake_ollama, fashion_data_dir, tiny_lm, tmp_path):
    server = fake_ollama(default=Reply(content=replies.NO_CODE_REPLY))
    for bad, why in [("{not json", "not JSON"),
                     (json.dumps({"question": "q", "answer": "a"}), "not a prompt-code pair")]:
        seeds = seed_file(tmp_path / "seeds.jsonl", GOOD_SEED, "", bad)
        result = new_cycles(server, fashion_data_dir, tmp_path, tiny_lm, "--seed-corpus",
                            str(seeds))
        assert result.exit_code == 2, result.output
        assert f"seed corpus {seeds}:3: {why}" in result.flat, result.output
    assert server.chat_requests() == []
    assert not (tmp_path / "results" / "nas").exists()


def test_resume_takes_a_corrected_base_model_until_a_cycle_fine_tunes(
        fake_ollama, fashion_data_dir, tiny_lm, tmp_path):
    """The base folder goes away during the first search (moved); the train step refuses it,
    --resume alone does too, --resume --base-model <its new place> goes on and finishes; once
    a cycle has fine-tuned, another base is refused."""
    base, moved = tmp_path / "base", tmp_path / "moved"
    shutil.copytree(tiny_lm, base)

    def generate(body: dict) -> Reply:
        if base.exists():
            base.rename(moved)
        return Reply(content=replies.NO_CODE_REPLY)

    server = fake_ollama(default=generate)
    seeds = seed_file(tmp_path / "seeds.jsonl", GOOD_SEED)
    result = new_cycles(server, fashion_data_dir, tmp_path, base, "--seed-corpus", str(seeds))
    assert result.exit_code == 2 and f"base model {base} not found" in result.flat, \
        result.output
    root = tmp_path / "results" / "nas"
    assert [r["step"] for r in log(root)] == ["search", "select"]

    resume = ("--name", "nas", "--resume", "--results-dir", str(tmp_path / "results"))
    result = invoke(*resume)
    assert result.exit_code == 2 and f"base model {base} not found" in result.flat

    result = invoke(*resume, "--base-model", str(moved))
    assert result.exit_code == 0, result.output
    assert f"base model: {moved} (was {base})" in result.flat
    assert json.loads((root / "cycles.json").read_text())["base_model"] == str(moved)
    assert [r["step"] for r in log(root)][-4:] == ["train", "publishing", "publish", "cycle"]

    result = invoke(*resume, "--base-model", str(tiny_lm))
    assert result.exit_code == 2, result.output
    assert "--base-model cannot change: cycle_01.lora was fine-tuned from" in result.flat
    assert json.loads((root / "cycles.json").read_text())["base_model"] == str(moved)


# -- what each cycle leaves on the Ollama server ---------------------------------------------
def publish_two_cycles(tmp_path: Path, server, base: Path, delete: bool):
    """Two cycles' train and publish steps (real LoRA, real uploads; no search: the corpus is
    a seed), and the bytes the server's blob folder grew by in each."""
    from orchestrator.finetune.cycles import Cycles, CycleSettings
    from orchestrator.finetune.train import LoraSettings

    settings = CycleSettings(name="nas", base_model=str(base), base_tag="coder:test", cycles=2,
                             ollama_host=server.url, delete_superseded=delete,
                             lora=LoraSettings(rank=4, alpha=8, epochs=1, lr=5e-3))
    toml = tmp_path / "search.toml"
    toml.write_text('dataset = "fashionmnist"\n')
    said: list[str] = []
    cycles = Cycles.create(tmp_path / "nas", settings, toml, say=said.append,
                           seeds=[seed_file(tmp_path / "seeds.jsonl", GOOD_SEED)])
    grown, records = [], []
    for cycle in (1, 2):
        if cycle == 2:  # the corpus grows, as a search would grow it
            more = json.dumps({"prompt": "A wider net.", "code": replies.VALID_NET_WIDER})
            cycles.corpus.seed(seed_file(tmp_path / "more.jsonl", more))
        before = server.disk_bytes()
        cycles.log.add(cycles.train(cycle))
        records.append(cycles.log.add(cycles.publish(cycle)))
        grown.append(server.disk_bytes() - before)
    print(f"{base.name}: bytes left on the server per cycle: {grown}")
    return grown, records, said


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_each_cycle_reports_what_it_left_on_the_server_and_a_llama_base_takes_the_adapter(
        fake_ollama, tiny_lm, tmp_path, arch):
    from tests.fake_ollama import DEEPSEEK_CODER_67B
    from tests.tiny_lm import build_tiny_llama

    llama = arch == "llama"
    base = build_tiny_llama(tmp_path / "tiny-llama") if llama else tiny_lm
    server = fake_ollama(specs={"coder:test": DEEPSEEK_CODER_67B} if llama else {})
    grown, records, said = publish_two_cycles(tmp_path, server, base, delete=llama)

    weights = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    adapter = (tmp_path / "nas" / "cycle_01.lora" / "adapter" / "adapter_model.safetensors")
    for left, record in zip(grown, records, strict=True):
        # the journaled estimate is the blobs' growth, up to the small template/config layers
        # (less what deleting the superseded tag freed)
        if not record["deleted"]:
            assert abs(record["left_bytes"] - left) <= 2_000, (record, left)
        assert record["route"] == ("adapter" if llama else "merged")
    lines = [line for line in said if line.startswith(f"left on {server.url}: ")]
    assert len(lines) == 2 and all("reclaim: " in line for line in lines), said
    creates = server.creates()
    if llama:
        # the adapter over the base: no weights uploaded, a few times the adapter left
        assert all(c["from"] == "coder:test" and "files" not in c for c in creates)
        assert all(left < 2 * adapter.stat().st_size + 2_000 for left in grown)
        assert grown[1] < records[1]["left_bytes"]  # c1's adapter layer freed
        assert records[1]["deleted"] == "coder-nas:c1" and "coder-nas:c1" not in server.models
        assert "deleted coder-nas:c1" in lines[1]
    else:
        # merged bf16 weights uploaded, their F16 conversion and its quantisation kept
        assert all("files" in c and "adapters" not in c for c in creates)
        assert all(left > weights for left in grown)  # fp32 base: bf16 copies are half of it
        assert {"coder-nas:c1", "coder-nas:c2"} <= set(server.models)


def test_a_udiff_cycle_searches_with_diffs_and_fine_tunes_on_them(fake_ollama, fashion_data_dir,
                                                                  tiny_lm, tmp_path):
    script = [replies.VALID_NET, replies.UDIFF_TWO_HUNKS]
    server = fake_ollama(default=lambda body: Reply(content=script.pop(0)))
    config = search_toml(tmp_path / "search.toml", server, fashion_data_dir)
    results = tmp_path / "results"
    proc = cycles("--name", "nas", "--config", str(config), "--base-model", str(tiny_lm),
                  "--base-tag", "coder:test", "--cycles", "1", "--candidates", "2",
                  "--threshold", "0", "--tau", "0.99", "--epochs", "1", "--rank", "4",
                  "--alpha", "8", "--edit-format", "udiff", results=results)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    root = results / "nas"
    run = [json.loads(line) for line in
           (root / "cycle_01" / "iterations.jsonl").read_text().splitlines()]
    assert json.loads((root / "cycle_01" / "config.json").read_text())["edit_format"] == "udiff"
    assert [(r["status"], r["edit"]["kind"]) for r in run] == [(fc.OK, "whole"), (fc.OK, "edit")]
    # The corpus: the first design whole, the second as the diff of the first, after the
    # udiff prompt the search sent; the fine-tuning step ran on both.
    first, diff = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]
    assert first["messages"][-1]["content"] == replies.VALID_NET.rstrip("\n")
    assert diff["source"]["edit_format"] == "udiff" and diff["source"]["base_iteration"] == 1
    assert diff["messages"][-1]["content"].startswith("```diff\n--- a/net.py\n+++ b/net.py\n")
    assert "unified diff" in diff["messages"][-2]["content"]
    (done,) = [r for r in log(root) if r["step"] == "cycle"]
    assert done["corpus_size"] == 2 and isinstance(done["train_loss"], float)
