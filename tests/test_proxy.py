"""Trusting the proxy (issue 15): the validation split, selection on it, repeats with their
seed noise, the paper's preset and the paper's Table 2 in reports.

The end-to-end cases run the real CLI (`--sandbox local`) against the scripted Ollama server.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from orchestrator import outcomes as fc
from orchestrator.analysis import paper
from orchestrator.config import PRESETS, ConfigError, RunConfig, build, for_resume, load_toml
from orchestrator.data import datasets
from orchestrator.sandbox.base import Execution, Limits
from orchestrator.sandbox.local import LocalSandbox
from orchestrator.search.evaluation import job_for, score
from orchestrator.store.records import summarize
from tests import replies
from tests.helpers import flat, tiny_job, write_tiny_cache
from tests.test_search_e2e import DIAGNOSIS, by_role, orchestrator, read_records, user_message

CLI = [sys.executable, "-m", "orchestrator"]


# ------------------------------------------------------------------------ dataset helpers


def write_cache(data_dir: Path, train_y: np.ndarray, test_y: np.ndarray,
                name: str = "mnist") -> datasets.PreparedDataset:
    """A complete `name` cache written by the datasets module's own writer; every image is
    unique and encodes its index (pixels 0 and 1: index // 256, index % 256) and split (pixel
    2: 0 train, 1 test)."""
    spec = datasets.SPECS[name]
    arrays = []
    for split, y in enumerate((train_y, test_y)):
        x = np.zeros((len(y), *spec.input_shape), np.uint8)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = np.divmod(np.arange(len(y)), 256)
        x[:, 0, 0, 2] = split
        x[:, 0, 1:, :] = np.random.default_rng(split).integers(0, 255, x[:, 0, 1:, :].shape)
        arrays += [x, np.asarray(y, np.uint8)]
    train_x, train_y, test_x, test_y = arrays
    datasets._write_cache(Path(data_dir) / spec.name, spec, (train_x, train_y, test_x, test_y))
    return datasets.load(spec.name, data_dir)


def index_of(x: np.ndarray) -> np.ndarray:
    """The index an image of write_cache encodes."""
    return x[:, 0, 0, 0].astype(int) * 256 + x[:, 0, 0, 1]


def from_tiny(tmp: Path, train: int, test: int) -> datasets.PreparedDataset:
    """tests.helpers' learnable tiny dataset as a complete mnist cache."""
    tiny = write_tiny_cache(tmp / "tiny", train, test)
    arrays = tuple(np.load(p) for p in (tiny / "train_x.npy", tiny / "train_y.npy",
                                        tiny / "test_x.npy",
                                        tiny.parent / "labels" / "test_y.npy"))
    datasets._write_cache(tmp / "data" / "mnist", datasets.SPECS["mnist"], arrays)
    return datasets.load("mnist", tmp / "data")


# ------------------------------------------------------------------------ holdout (unit)


def test_holdout_is_stratified_complete_and_disjoint(tmp_path):
    train_y = np.repeat(np.arange(10), 10 * np.arange(1, 11))  # class c: 10 (c + 1) images
    test_y = np.arange(60) % 10
    prepared = write_cache(tmp_path, np.random.default_rng(3).permutation(train_y), test_y)
    held = datasets.holdout(prepared, 0.1, 42)

    assert held.root == prepared.root / "holdout" / "0.1-42"
    vc = held.val_count
    assert vc == 55 == held.meta["holdout"]["val_count"]
    assert held.train_count == 550 - 55 and held.test_count == 55 + 60
    eval_x = np.load(held.sandbox_dir / "test_x.npy")
    eval_y = held.test_labels()
    val = index_of(eval_x[:vc])
    kept = index_of(np.load(held.sandbox_dir / "train_x.npy"))
    assert (eval_x[:vc, 0, 0, 2] == 0).all()  # training images ...
    assert (eval_x[vc:, 0, 0, 2] == 1).all()  # ... followed by the test images, in order
    assert list(index_of(eval_x[vc:])) == list(range(60))
    # disjoint and complete
    assert not set(val) & set(kept)
    assert sorted([*val, *kept]) == list(range(550))
    # the labels follow their images: kept ones in the sandbox, held-out ones on the host only
    original = np.load(prepared.sandbox_dir / "train_y.npy")
    assert list(np.load(held.sandbox_dir / "train_y.npy")) == list(original[kept])
    assert list(eval_y[:vc]) == list(original[val]) and list(eval_y[vc:]) == list(test_y)
    # stratified: each class gives exactly its tenth
    assert np.bincount(eval_y[:vc], minlength=10).tolist() == list(range(1, 11))
    assert sorted(p.name for p in held.sandbox_dir.iterdir()) == [
        "test_x.npy", "train_x.npy", "train_y.npy"]


def test_holdout_strata_of_uneven_classes(tmp_path):
    counts = [7, 13, 31, 2, 47]
    train_y = np.random.default_rng(0).permutation(np.repeat(np.arange(5), counts))
    held = datasets.holdout(write_cache(tmp_path, train_y, np.zeros(4, int)), 0.25, 1)
    per_class = np.bincount(held.test_labels()[:held.val_count], minlength=5)
    assert held.val_count == int(sum(counts) * 0.25)
    for got, n in zip(per_class, counts, strict=True):
        assert abs(got - n * 0.25) < 1, (per_class, counts)


def test_holdout_is_seeded(tmp_path):
    train_y = np.arange(400) % 4
    test_y = np.arange(8) % 4

    def split(where: str, seed: int) -> list[int]:
        held = datasets.holdout(write_cache(tmp_path / where, train_y, test_y), 0.1, seed)
        return list(index_of(np.load(held.sandbox_dir / "test_x.npy")[:held.val_count]))

    first = split("a", 7)
    assert split("b", 7) == first  # built afresh elsewhere: the same split
    assert split("c", 8) != first
    assert len(first) == 40


def test_a_holdout_that_would_be_empty_is_refused(tmp_path):
    prepared = write_cache(tmp_path, np.arange(5) % 2, np.arange(4) % 2)
    with pytest.raises(datasets.DatasetError, match=r"5 training images cannot give a "
                       r"validation split of 0\.1.*--select-on test"):
        datasets.holdout(prepared, 0.1, 42)
    assert not (prepared.root / "holdout" / "0.1-42").exists()


def test_for_run_holds_out_only_when_selecting_on_val(tmp_path):
    write_cache(tmp_path, np.arange(100) % 10, np.arange(20) % 10)
    val = datasets.for_run("mnist", tmp_path, 50, 10, 3, "val", 0.2)
    test = datasets.for_run("mnist", tmp_path, 50, 10, 3, "test", 0.2)
    assert test.root == tmp_path / "mnist" / "subsets" / "50-10-3" and test.val_count == 0
    assert val.root == test.root / "holdout" / "0.2-3"
    assert (val.val_count, val.train_count, val.test_count) == (10, 40, 20)


# ------------------------------------------------------------------------ score (unit)


def execution(predictions: list[int]) -> Execution:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(predictions, np.int64))
    result = json.dumps({"status": "ok", "phase": "predict", "metrics": {}}).encode()
    return Execution(0, 1.0, result_bytes=result, predictions_bytes=buffer.getvalue())


def test_score_splits_validation_from_test():
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1], np.uint8)
    predictions = [0, 1, 2, 0, 3, 3, 3, 3, 0, 1]  # val (first 4): 3/4; test (last 6): 3/6
    outcome = score(execution(predictions), labels, 4, val_count=4)
    assert outcome.status == fc.OK
    assert outcome.val_accuracy == 0.75 and outcome.test_accuracy == 0.5
    assert outcome.accuracy == 0.75  # validation selects
    plain = score(execution(predictions), labels, 4)
    assert plain.accuracy == plain.test_accuracy == 0.6 and plain.val_accuracy is None
    # predictions of the test images only are not enough: one per evaluation image
    short = score(execution(predictions[4:]), labels, 4, val_count=4)
    assert short.status == fc.RUNTIME_ERROR and short.accuracy is None


# ------------------------------------------------------------------------ labels stay out


def test_local_sandbox_gets_no_validation_labels(tmp_path):
    """The local sandbox is handed the holdout's sandbox dir: the training set less the
    validation images, and the evaluation images without any label."""
    held = datasets.holdout(from_tiny(tmp_path, 120, 40), 0.1, 5)
    assert held.val_count == 12
    code = (
        "import hashlib, json, os, sys\n"
        "import numpy as _np\n"
        "_data = sys.argv[sys.argv.index('--data') + 1]\n"
        "_given = [_data, os.getcwd(), os.environ['HOME']]\n"
        "_names = [n for root in _given for _, ds, fs in os.walk(root) for n in ds + fs]\n"
        "_x = _np.load(os.path.join(_data, 'train_x.npy'))\n"
        "print('REPORT ' + json.dumps({'names': _names, 'data': sorted(os.listdir(_data)),\n"
        "    'train_y': len(_np.load(os.path.join(_data, 'train_y.npy'))),\n"
        "    'digests': [hashlib.md5(r.tobytes()).hexdigest()[:10] for r in _x]}), flush=True)\n"
        + replies.VALID_NET
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with LocalSandbox(held.sandbox_dir, Limits(timeout=120, memory="2g"), device="cpu",
                      scratch=scratch) as box:
        ex = box.run(code, tiny_job())
    outcome = score(ex, held.test_labels(), 10, held.val_count)
    assert outcome.status == fc.OK, outcome.error
    line = next(ln for ln in ex.log_tail.splitlines() if ln.startswith("REPORT "))
    seen = json.loads(line[len("REPORT "):])
    assert seen["data"] == ["test_x.npy", "train_x.npy", "train_y.npy"]
    assert not [n for n in seen["names"] if re.match(r"(test|val)_y|labels", n)], seen["names"]
    assert seen["train_y"] == 120 - 12 == held.train_count
    eval_x = np.load(held.sandbox_dir / "test_x.npy")
    val_digests = {hashlib.md5(r.tobytes()).hexdigest()[:10]
                   for r in eval_x[:held.val_count]}
    assert len(seen["digests"]) == 108 and not val_digests & set(seen["digests"])
    assert list(scratch.iterdir()) == []


# ------------------------------------------------------------------------ the preset (unit)

PAPER = {  # "Resource-Efficient Iterative LLM-Based NAS with Feedback Memory", section 4.1
    "dataset": "cifar10", "epochs": 1, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
    "batch_size": 128, "history_size": 5, "temperature": 0.7, "top_p": 0.9,
    "num_predict": 2048, "timeout": 1800.0, "seed": 42, "select_on": "test", "repeats": 1,
    "precision": "fp32", "train_samples": None, "test_samples": None,
    "extended_prompt": False, "no_history": False, "no_reference": False, "no_improver": False,
    "edit_format": "whole",  # the paper generates whole files
}


def test_the_paper_preset_sets_every_protocol_value():
    cfg = build({}, {"preset": "paper"})
    for key, value in PAPER.items():
        got = getattr(cfg, key)
        assert got == value and type(got) is type(value), (key, got, value)
    assert cfg.preset == "paper"
    assert PRESETS["paper"] == PAPER  # nothing more, nothing less
    # It differs from the defaults where the defaults are not the paper's protocol.
    assert RunConfig().select_on == "val" and cfg.select_on == "test"


def test_the_paper_presets_job_is_the_papers(tmp_path):
    cfg = build({}, {"preset": "paper"})
    cifar = datasets.PreparedDataset("cifar10", tmp_path, datasets.SPECS["cifar10"], {})
    job = job_for(cfg, cifar)
    assert {k: job[k] for k in ("crop_padding", "flip", "epochs", "batch_size", "lr",
                                "momentum", "weight_decay", "seed", "precision")} == {
        "crop_padding": 4, "flip": True, "epochs": 1, "batch_size": 128, "lr": 0.01,
        "momentum": 0.9, "weight_decay": 5e-4, "seed": 42, "precision": "fp32"}
    assert job["input_shape"] == [3, 32, 32] and job["num_classes"] == 10
    assert job_for(cfg, cifar, seed=43, epochs=30)["seed"] == 43
    assert job_for(cfg, cifar, seed=43, epochs=30)["epochs"] == 30


def test_toml_then_flags_override_the_preset(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "paper"\nepochs = 3\nlr = 0.05\n')
    cfg = build(load_toml(toml), {"lr": 0.2, "select_on": None, "no_history": False})
    assert (cfg.preset, cfg.epochs, cfg.lr) == ("paper", 3, 0.2)  # file > preset, flag > file
    assert cfg.select_on == "test" and cfg.no_history is False  # unset flags keep the preset
    cfg = build({"epochs": 3}, {"preset": "paper", "epochs": 5})
    assert cfg.epochs == 5 and cfg.momentum == 0.9
    assert build({"select_on": "val"}, {"preset": "paper"}).select_on == "val"


def test_an_unknown_preset_names_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"preset = 'papr'.*paper"):
        build({}, {"preset": "papr"})
    with pytest.raises(ConfigError, match="paper"):
        build({"preset": "nope"}, {})
    proc = subprocess.run([*CLI, "run", "--preset", "papr", "--name", "x", "--results-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "papr" in proc.stdout + proc.stderr and "paper" in proc.stdout + proc.stderr
    assert not (tmp_path / "x").exists()


def test_resuming_a_run_from_before_select_on_keeps_test():
    stored = RunConfig(dataset="mnist").to_dict()
    for key in ("select_on", "val_fraction", "repeats", "preset"):
        stored.pop(key)
    cfg, ignored = for_resume(stored, {"iterations": 9})
    assert cfg.select_on == "test" and cfg.repeats == 1 and cfg.iterations == 9
    assert ignored == []
    current, _ = for_resume(RunConfig(dataset="mnist").to_dict(), {})
    assert current.select_on == "val"


# ------------------------------------------------------------------------ end to end

CONSTANT_NET = '''\
import torch
import torch.nn as nn


class Net(nn.Module):
    """Predicts class {cls} whatever the image and whatever training does."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.zeros(len(x), 10, device=x.device)
        logits[:, {cls}] = 1.0
        return logits + 0.0 * self.unused
'''


def args_for(server, data_dir: Path, results: Path, name: str, iterations: int,
             dataset: str, *extra: str) -> list[str]:
    return ["--dataset", dataset, "--iterations", str(iterations), "--sandbox", "local",
            "--generator-model", "coder:test", "--improver-model", "improver:test",
            "--ollama-host", server.url, "--data-dir", str(data_dir), "--results-dir",
            str(results), "--name", name, "--device", "cpu", "--timeout", "300",
            "--memory", "4g", "--seed", "42", *extra]


def run_cli(*args: str) -> str:
    proc = orchestrator(*args)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def disagreeing_data(tmp_path_factory) -> Path:
    """An mnist cache (real IDX files, prepared by the CLI's own code) whose classes are
    distributed differently in training (so in the validation split) and in test: class 0
    is common in training, class 1 in test."""
    source = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    train_y = rng.permutation(np.repeat(np.arange(10), [400, 100] + [60] * 8))
    test_y = rng.permutation(np.repeat(np.arange(10), [10, 110] + [10] * 8))
    for stem, array in (("train-images-idx3-ubyte", rng.integers(0, 255, (980, 28, 28))),
                        ("train-labels-idx1-ubyte", train_y),
                        ("t10k-images-idx3-ubyte", rng.integers(0, 255, (200, 28, 28))),
                        ("t10k-labels-idx1-ubyte", test_y)):
        header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
        (source / stem).write_bytes(header + np.asarray(array, np.uint8).tobytes())
    data_dir = tmp_path_factory.mktemp("disagreeing")
    datasets.prepare("mnist", data_dir, source, progress=False)
    return data_dir


@pytest.mark.slow
def test_selection_follows_validation_not_test(fake_ollama, disagreeing_data, tmp_path):
    always = {c: CONSTANT_NET.format(cls=c) for c in (0, 1)}
    for select_on in ("val", "test"):
        server = fake_ollama(default=by_role([always[0], always[1]], DIAGNOSIS[:2]))
        run_cli(*args_for(server, disagreeing_data, tmp_path, select_on, 2, "mnist",
                          "--select-on", select_on))
        run_dir = tmp_path / select_on
        records = read_records(run_dir)
        assert [r["status"] for r in records] == [fc.OK, fc.OK], records
        config = json.loads((run_dir / "config.json").read_text())
        used = datasets.for_run("mnist", disagreeing_data, None, None, 42, select_on, 0.1)
        labels, vc = used.test_labels(), used.val_count
        for record, cls in zip(records, (0, 1), strict=True):
            assert record["metric"] == select_on == config["select_on"]
            assert record["test_accuracy"] == pytest.approx(np.mean(labels[vc:] == cls))
            if select_on == "val":
                assert vc == 98
                val = float(np.mean(labels[:vc] == cls))
                assert record["val_accuracy"] == pytest.approx(val)
                assert record["accuracy"] == record["val_accuracy"]
            else:
                assert vc == 0 and record["val_accuracy"] is None
                assert record["accuracy"] == record["test_accuracy"]
            told = f"accuracy {record['accuracy']:.2%}"
            assert record["triple"]["outcome"].startswith(told)
        a, b = records
        # The two protocols disagree on this data: A is better on validation, B on test.
        assert b["test_accuracy"] > a["test_accuracy"] + 0.3
        winner = a if select_on == "val" else b
        assert records[-1]["best_iteration"] == winner["iteration"]
        best_py = (run_dir / "best.py").read_text()
        assert best_py == (run_dir / winner["code_file"]).read_text()
        assert best_py.strip() == always[0 if select_on == "val" else 1].strip()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary == summarize(records)
        assert summary["metric"] == select_on and summary["best_iteration"] == winner["iteration"]
        assert summary["best_accuracy"] == pytest.approx(winner["accuracy"])
        assert summary["best_test_accuracy"] == pytest.approx(winner["test_accuracy"])
        # The Improver was told the selection metric and never the other one.
        prompts = [user_message(body) for body in server.chat_requests() if body.get("format")]
        assert f"accuracy {a['accuracy']:.2%}" in prompts[0]
        if select_on == "val":
            assert a["val_accuracy"] > b["val_accuracy"] + 0.2
            for prompt in prompts:
                assert f"{a['test_accuracy']:.2%}" not in prompt
                assert f"{b['test_accuracy']:.2%}" not in prompt


@pytest.mark.slow
def test_repeats_measure_the_seed_noise(fake_ollama, fashion_data_dir, tmp_path):
    server = fake_ollama(default=by_role([replies.VALID_NET, replies.VALID_NET_WIDER],
                                         DIAGNOSIS[:2]))
    (tmp_path / "run.toml").write_text("batch_size = 32\n")  # some learning in 800 images
    run_cli(*args_for(server, fashion_data_dir, tmp_path, "rep", 2, "fashionmnist",
                      "--train-samples", "1000", "--test-samples", "200", "--repeats", "2",
                      "--val-fraction", "0.2", "--config", str(tmp_path / "run.toml")))
    run_dir = tmp_path / "rep"
    records = read_records(run_dir)
    assert [r["status"] for r in records] == [fc.OK, fc.OK], records
    for r in records:
        accs, tests = r["repeats"]["accuracies"], r["repeats"]["test_accuracies"]
        assert len(accs) == len(tests) == 2 and r["metric"] == "val"
        assert r["accuracy"] == pytest.approx(np.mean(accs))
        assert r["val_accuracy"] == pytest.approx(np.mean(accs))
        assert r["test_accuracy"] == pytest.approx(np.mean(tests))
        assert accs[0] != accs[1] or tests[0] != tests[1], r["repeats"]  # two seeds
    sd = float(np.sqrt(np.mean([np.var(r["repeats"]["accuracies"], ddof=1) for r in records])))
    best, other = sorted(records, key=lambda r: -r["accuracy"])

    metrics = json.loads(subprocess.run([*CLI, "report", str(run_dir), "--json"], check=True,
                                        capture_output=True, text=True).stdout)
    table = metrics["runs"][0]["table2"]
    assert table["seed_sd"] == pytest.approx(sd) and table["repeated"] == 2
    assert table["lead"] == pytest.approx(best["accuracy"] - other["accuracy"])
    a, b = best["repeats"]["accuracies"], other["repeats"]["accuracies"]
    if np.ptp(a + b) > 0:
        p = sps.ttest_ind(a, b, equal_var=False).pvalue
        if np.isfinite(p):
            assert table["lead_p"] == pytest.approx(p)
            assert table["lead_exceeds_noise"] == bool(p < 0.05 and table["lead"] > 0)

    markdown = flat(subprocess.run([*CLI, "report", str(run_dir)], check=True,
                                   capture_output=True, text=True).stdout)
    assert f"| Seed sd of the metric | {100 * sd:.2f} pp (2 candidates with several seeds) |" \
        in markdown, markdown
    assert "| Best's lead over the runner-up | " in markdown
    assert "| Selected on | validation accuracy" in markdown


# ------------------------------------------------------------------------ the paper's table


def test_report_prints_the_papers_table_beside_a_cifar10_run(tmp_path):
    run_dir = tmp_path / "cifar"
    (run_dir / "candidates").mkdir(parents=True)
    config = {"name": "cifar", "dataset": "cifar10", "generator_model": "qwen2.5:7b",
              "improver_model": "qwen2.5:7b", "seed": 42, "iterations": 3, "select_on": "test"}
    (run_dir / "config.json").write_text(json.dumps(config))
    lines = []
    for it, acc in ((1, 0.31), (2, None), (3, 0.44)):
        (run_dir / "candidates" / f"iter_{it:04d}.py").write_text("class Net: pass\n")
        lines.append(json.dumps({
            "iteration": it, "status": "ok" if acc else "syntax_error", "accuracy": acc,
            "metric": "test", "test_accuracy": acc, "val_accuracy": None, "repeats": None,
            "error": None if acc else {"type": "SyntaxError", "message": "x", "traceback": ""},
            "code_file": f"candidates/iter_{it:04d}.py", "time": 1_790_000_000.0 + it}) + "\n")
    (run_dir / "iterations.jsonl").write_text("".join(lines))

    text = flat(subprocess.run([*CLI, "report", str(run_dir)], check=True, capture_output=True,
                               text=True).stdout)
    assert "beside the paper (Gu, Ignatov, Timofte, arXiv 2603.12091, Table 2)" in text, text
    assert paper.SOURCE in text
    # Qwen2.5-7B is the paper's model of the run's generator family: only its column.
    assert "| Metric | cifar | paper: Qwen2.5-7B |" in text
    assert "| Success rate | 66.7% | 18.8% |" in text  # 376 / 2000
    assert "| First accuracy (test) | 31.0% | 50.0% |" in text
    assert "| Best accuracy (test) | 44.0% | 71.5% |" in text
    assert "| Selected on | test accuracy (the paper's protocol) |" in text
    # A dataset the paper did not use gets no such table.
    config["dataset"] = "mnist"
    (run_dir / "config.json").write_text(json.dumps(config))
    text = subprocess.run([*CLI, "report", str(run_dir)], check=True, capture_output=True,
                          text=True).stdout
    assert paper.SOURCE not in flat(text)
