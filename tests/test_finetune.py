"""LoRA fine-tuning, merging and export to Ollama, for real on a tiny Qwen2 (CPU, seconds).

Nothing of torch, peft or trl is mocked: the adapter is trained by trl's SFTTrainer, a run is
killed with os._exit in a child process right after a checkpoint and resumed here, the merge
is checked against the peft model's own logits, and the export speaks the Ollama API to the
scripted server (blob uploads checked against their sha256, then /api/create).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import httpx
import ollama
import pytest

pytest.importorskip("peft", reason="NOT TESTED: the [finetune] extra is not installed")
pytest.importorskip("trl", reason="NOT TESTED: the [finetune] extra is not installed")

from orchestrator.finetune import publish as pub  # noqa: E402
from orchestrator.finetune import train  # noqa: E402
from orchestrator.finetune.train import (  # noqa: E402
    ADAPTER_DIR,
    CHECKPOINT_DIR,
    RESULT_FILE,
    FinetuneError,
    LoraSettings,
    TrainResult,
    finetune,
    load_corpus,
)
from tests.fake_ollama import SHOW_TEMPLATE, FakeOllama  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FAST = LoraSettings(lr=5e-3, epochs=3)  # the paper's LoRA shape; a rate that moves in 24 steps
TAG = "coder-nas:c1"
BASE_TAG = "qwen2.5-coder:7b"
LAYERS = ("conv", "linear", "bn")


def net_code(i: int) -> str:
    width = 16 * (i + 1)
    return textwrap.dedent(f"""\
        import torch.nn as nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, {width}, 3, padding=1)
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.fc = nn.Linear({width}, 10)

            def forward(self, x):
                return self.fc(self.pool(self.conv(x).relu()).flatten(1))
        """)


def write_corpus(path: Path, n: int = 8) -> Path:
    """n NNGPT-style chat examples (system, user, assistant code) with provenance."""
    lines = []
    for i in range(n):
        messages = [
            {"role": "system", "content": "You write PyTorch image classifiers."},
            {"role": "user", "content": f"Write a Net for CIFAR-10 with a {LAYERS[i % 3]} "
                                        f"layer of width {16 * (i + 1)}."},
            {"role": "assistant", "content": net_code(i)},
        ]
        lines.append(json.dumps({"messages": messages, "source": {"run": "r1", "iteration": i},
                                 "accuracy": 0.5 + i / 100}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="module")
def trained(tiny_lm: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real LoRA run (3 epochs of 8 examples), shared by the tests below."""
    out = tmp_path_factory.mktemp("lora") / "cycle_01.lora"
    return finetune(tiny_lm, corpus, out, FAST, progress=False)


@pytest.fixture(scope="module")
def merged(tiny_lm: Path, trained: TrainResult, tmp_path_factory: pytest.TempPathFactory):
    return pub.merge(tiny_lm, trained.adapter_dir, tmp_path_factory.mktemp("merge") / "merged")


# -- settings and corpus ---------------------------------------------------------------------
def test_lora_settings_defaults_are_the_nngpt_papers():
    paper = {"rank": 32, "alpha": 32, "dropout": 0.05,
             "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                "down_proj"),
             "epochs": 5, "lr": 1e-5, "batch_size": 1, "grad_accum": 1, "max_length": 4096,
             "load_in_4bit": False, "seed": 42}
    defaults = LoraSettings()
    assert [f.name for f in fields(LoraSettings)] == list(paper)
    for name, value in paper.items():
        assert getattr(defaults, name) == value, name


def test_the_corpus_becomes_prompt_completion_chats(corpus: Path):
    examples = load_corpus(corpus)
    assert len(examples) == 8
    first = examples[0]
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert first["completion"] == [{"role": "assistant", "content": net_code(0)}]


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("\n  \n", "is empty"),
    ('{"source": {"run": "r"}}\n', 'has no "messages"'),
    ('{"messages": []}\n', 'has no "messages"'),
    ("not json\n", "is not JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', "the assistant's answer"),
    ('{"messages": [{"role": "assistant", "content": "x = 1"}]}\n', "no prompt"),
    ('{"messages": [{"role": "robot", "content": "x"}]}\n', "needs a role"),
])
def test_a_corpus_without_examples_is_a_clear_error(tmp_path: Path, tiny_lm: Path, text: str,
                                                    message: str):
    bad = tmp_path / "corpus.jsonl"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(FinetuneError, match=message):
        finetune(tiny_lm, bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_missing_corpus_or_base_is_a_clear_error(tmp_path: Path, tiny_lm: Path, corpus: Path,
                                                   monkeypatch):
    with pytest.raises(FinetuneError, match="does not exist"):
        finetune(tiny_lm, tmp_path / "nothing.jsonl", tmp_path / "out", progress=False)
    with pytest.raises(FinetuneError, match="not found: no such folder"):
        finetune(tmp_path / "no-model", corpus, tmp_path / "out", progress=False)
    with pytest.raises(FinetuneError, match="not found: no such folder"):
        finetune("./no-model", corpus, tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FinetuneError, match="has no config.json"):
        finetune(tmp_path / "empty", corpus, tmp_path / "out", progress=False)
    # a hub id the hub cannot give (offline here, so no waiting on retries)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(FinetuneError, match="cannot load base model"):
        finetune("orchestrator-tests/no-such-model-xyz", corpus, tmp_path / "out",
                 progress=False)


def test_the_host_package_does_not_import_the_finetune_libraries():
    code = ("import sys, orchestrator.finetune.train, orchestrator.finetune.publish; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- training --------------------------------------------------------------------------------
def test_lora_training_lowers_the_loss_and_writes_the_adapter(trained: TrainResult):
    out = trained.adapter_dir.parent
    losses = trained.losses
    print(f"\nloss: first {losses[0]:.3f}, last {losses[-1]:.3f}, mean {trained.train_loss:.3f} "
          f"over {len(losses)} steps")
    assert len(losses) == 24  # 3 epochs of 8 examples, batch 1: a loss logged per step
    assert losses[-1] < losses[0] - 0.5
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5
    assert trained.train_loss == pytest.approx(sum(losses) / len(losses))
    assert trained.examples == 8 and trained.tokens > 8 * 3 * 50
    assert not trained.resumed
    assert trained.adapter_dir == out / ADAPTER_DIR
    config = json.loads((trained.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == FAST.rank and config["lora_alpha"] == FAST.alpha
    assert config["lora_dropout"] == FAST.dropout
    assert sorted(config["target_modules"]) == sorted(FAST.target_modules)
    assert (trained.adapter_dir / "adapter_model.safetensors").is_file()
    stored = json.loads((out / RESULT_FILE).read_text())
    assert TrainResult.from_json(out, stored) == trained
    assert not (out / CHECKPOINT_DIR).exists()  # finished: checkpoints removed


def test_fine_tuning_throughput_on_cpu(trained: TrainResult):
    """Prints tokens/s of the tiny model on this machine's CPU (no timing assertion)."""
    print(f"\nfine-tuning throughput (tiny Qwen2, CPU): {trained.tokens} tokens in "
          f"{trained.seconds:.2f} s = {trained.tokens_per_second:.0f} tokens/s")
    assert trained.seconds > 0 and trained.tokens_per_second > 0


def test_the_loss_is_on_the_answer_only(tiny_lm: Path, corpus: Path, tmp_path: Path):
    """The trainer finetune builds masks each prompt (system, user, the assistant header):
    labels are -100 there, then the answer's tokens and the end of its turn."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    examples = load_corpus(corpus)
    trainer = train.build_trainer(str(tiny_lm), examples, tmp_path, FAST, progress=False)
    assert len(trainer.train_dataset) == len(examples)
    for i, (example, row) in enumerate(zip(examples, trainer.train_dataset, strict=True)):
        prompt = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
        labels = row["labels"]
        assert row["input_ids"][: len(prompt)] == prompt
        assert labels[: len(prompt)] == [-100] * len(prompt)
        assert -100 not in labels[len(prompt):]
        assert tokenizer.decode(labels[len(prompt):]) == net_code(i) + "<|im_end|>\n"


def test_examples_cut_at_max_length_are_reported():
    rows = {"input_ids": [[1] * 32, [1] * 5, [1] * 40]}
    with pytest.warns(UserWarning, match="2 of 3 corpus examples reach max_length=32"):
        train._warn_truncated(rows, 32)


def test_an_interrupted_run_resumes_from_its_checkpoint(tiny_lm: Path, corpus: Path,
                                                         trained: TrainResult, tmp_path: Path):
    out = tmp_path / "lora"
    settings = LoraSettings(lr=5e-3, epochs=2)  # 16 steps, a checkpoint every 2
    # The child trains and dies by os._exit right after its first checkpoint is on disk, as a
    # kill -9 would leave it: no clean-up, no train_result.json.
    child = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from transformers.trainer_callback import CallbackHandler
        from orchestrator.finetune.train import LoraSettings, finetune

        saved = CallbackHandler.on_save
        def on_save(self, args, state, control):
            saved(self, args, state, control)
            os._exit(9)
        CallbackHandler.on_save = on_save
        finetune(Path({str(tiny_lm)!r}), Path({str(corpus)!r}), Path({str(out)!r}),
                 LoraSettings(lr=5e-3, epochs=2), progress=False)
        sys.exit(0)
    """)
    done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 9, done.stderr[-3000:]
    checkpoints = sorted(p.name for p in (out / CHECKPOINT_DIR).glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2"]
    assert not (out / RESULT_FILE).exists() and not (out / ADAPTER_DIR).exists()

    result = finetune(tiny_lm, corpus, out, settings, progress=False)
    assert result.resumed
    assert len(result.losses) == 16  # the two steps before the kill, then the other 14
    assert result.tokens * 3 == trained.tokens * 2  # every example twice, none skipped or doubled
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert not (out / CHECKPOINT_DIR).exists()

    # A finished out_dir: the stored result, no training (no checkpoint, the adapter untouched)
    stamp = (result.adapter_dir / "adapter_model.safetensors").stat().st_mtime_ns
    again = finetune(tiny_lm, corpus, out, settings, progress=False)
    assert again == result
    assert not (out / CHECKPOINT_DIR).exists()
    assert (result.adapter_dir / "adapter_model.safetensors").stat().st_mtime_ns == stamp

    # The same folder for other settings is refused rather than mixed up
    with pytest.raises(FinetuneError, match="a different settings"):
        finetune(tiny_lm, corpus, out, LoraSettings(lr=1e-3, epochs=2), progress=False)


# -- merge -----------------------------------------------------------------------------------
def test_the_merged_model_generates_and_matches_the_adapter(tiny_lm: Path, trained: TrainResult,
                                                            merged: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (merged / pub.MERGED_MARKER).is_file()
    config = json.loads((merged / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert "chat_template" in json.loads((merged / "tokenizer_config.json").read_text())

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.dtype == torch.bfloat16
    chat = [{"role": "user", "content": "Write a Net for CIFAR-10."}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]

    base = AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, str(trained.adapter_dir)).eval()
    merged32 = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    merged_state = merged32.state_dict()
    for name, weight in base_state.items():
        lora = name.endswith(".weight") and any(f".{m}." in name for m in FAST.target_modules)
        if lora:  # W + scale * B @ A, stored in bf16
            module = peft_model.get_submodule("base_model.model." + name.removesuffix(".weight"))
            expected = (weight + module.get_delta_weight("default")).to(torch.bfloat16)
            assert not torch.equal(merged_state[name], weight.to(torch.bfloat16)), name
            assert torch.equal(merged_state[name], expected.float()), name
        else:
            assert torch.equal(merged_state[name], weight.to(torch.bfloat16).float()), name
    with torch.no_grad():
        adapted = peft_model(ids).logits
        merged_logits = merged32(ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(ids).logits
    lora_effect = (adapted - plain).abs().max().item()
    error = (merged_logits - adapted).abs().max().item()
    print(f"\nlogits: LoRA changes them by up to {lora_effect:.4f}; the merged bf16 model is "
          f"within {error:.4f} of the adapted one")
    assert error < 0.1 * lora_effect
    assert torch.allclose(merged_logits, adapted, atol=0.1 * lora_effect, rtol=0)


def test_merge_is_idempotent(tiny_lm: Path, trained: TrainResult, merged: Path):
    weights = merged / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert pub.merge(tiny_lm, trained.adapter_dir, merged) == merged
    assert weights.stat().st_mtime_ns == stamp
    with pytest.raises(FinetuneError, match="no LoRA adapter"):
        pub.merge(tiny_lm, merged, merged.with_name("other"))


# -- publish ---------------------------------------------------------------------------------
def test_publish_uploads_every_file_once_and_creates_the_model(merged: Path, fake_ollama,
                                                               capsys):
    fake = fake_ollama(models=[BASE_TAG])
    files = pub.model_files(merged)
    names = {p.name for p in files}
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert pub.MERGED_MARKER not in names
    expected = {p.name: pub.file_digest(p) for p in files}

    digest = pub.publish(fake.url, merged, TAG, base_tag=BASE_TAG, progress=False).digest

    for path in files:
        assert expected[path.name] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    blobs = fake.blobs()
    assert {d: blobs[d] for d in expected.values()} == \
        {expected[p.name]: p.stat().st_size for p in files}
    assert sorted(fake.uploads()) == sorted(expected.values())  # each once
    (create,) = fake.creates()
    assert create["model"] == TAG
    assert create["files"] == expected
    assert create["template"] == SHOW_TEMPLATE
    assert create["parameters"] == {"stop": ["<|im_start|>", "<|im_end|>"]}
    assert create["quantize"] == "q4_K_M"
    assert fake.models[TAG] == digest
    client = ollama.Client(host=fake.url)
    listed = {m.model: m.digest for m in client.list().models}
    assert listed[TAG] == digest
    assert client.show(TAG).template == SHOW_TEMPLATE

    # Again (a resumed export): the blobs are on the server already, nothing is re-uploaded;
    # the model is created anew, here with progress shown
    capsys.readouterr()
    again = pub.publish(fake.url, merged, TAG, base_tag=BASE_TAG, quantize=None).digest
    assert sorted(fake.uploads()) == sorted(expected.values())
    assert len(fake.creates()) == 2 and "quantize" not in fake.creates()[1]
    assert again != digest and fake.models[TAG] == again
    assert "success" in capsys.readouterr().err


def test_publish_without_a_base_tag_sends_no_template(merged: Path, fake_ollama):
    fake = fake_ollama(models=[])
    pub.publish(fake.url.removeprefix("http://"), merged, "plain:1", progress=False)
    (create,) = fake.creates()
    assert "template" not in create and "parameters" not in create


def test_publish_errors_are_clear(merged: Path, fake_ollama, tmp_path: Path):
    class PrunedBlobs(FakeOllama):
        """Says it has every blob (as after an upload), but lost them before the create."""

        def _has_blob(self, h, digest, body):
            h.send_empty(200)

    with PrunedBlobs(models=[BASE_TAG]) as fake:
        with pytest.raises(pub.PublishError, match=r"creating coder-nas:c1 .*HTTP 400.*blob "
                                                   r"sha256:[0-9a-f]{64} not found"):
            pub.publish(fake.url, merged, TAG, base_tag=BASE_TAG, progress=False)
        assert TAG not in fake.models

    fake = fake_ollama(models=[])
    with pytest.raises(pub.PublishError, match=f"base model {BASE_TAG} is not usable"):
        pub.publish(fake.url, merged, TAG, base_tag=BASE_TAG, progress=False)

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for base_tag in (BASE_TAG, None):
        with pytest.raises(pub.PublishError, match=f"cannot reach the Ollama server at "
                                                   f"http://127.0.0.1:{port}"):
            pub.publish(f"127.0.0.1:{port}", merged, TAG, base_tag=base_tag, progress=False)

    with pytest.raises(pub.PublishError, match="not a merged model folder"):
        pub.publish(fake.url, tmp_path, TAG, progress=False)


def test_the_fake_server_checks_blobs_and_creates(fake_ollama):
    fake = fake_ollama(models=[])
    data = b"weights"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=fake.url) as http:
        assert http.head(f"/api/blobs/{digest}").status_code == 404
        assert http.post(f"/api/blobs/{digest}", content=b"other").status_code == 400
        assert http.post(f"/api/blobs/{digest}", content=data).status_code == 201
        assert http.head(f"/api/blobs/{digest}").status_code == 200
        missing = "sha256:" + "0" * 64
        reply = http.post("/api/create", json={"model": "m:1", "files": {"a": missing}})
        assert reply.status_code == 400 and missing in reply.json()["error"]
        files = {"model.safetensors": digest, "config.json": digest}
        reply = http.post("/api/create", json={"model": "m:1", "files": files, "stream": False})
        assert reply.json() == {"status": "success"}
    assert fake.blobs()[digest] == len(data) and "m:1" in fake.models
    assert [c["model"] for c in fake.creates()] == ["m:1", "m:1"]


def test_the_fake_server_refuses_the_creates_ollama_refuses(fake_ollama):
    """server/create.go: a file name that is not a relative path (CreateHandler,
    fs.ValidPath), files of no known type (errUnknownType), safetensors without config.json
    (convert.ConvertModel), a quantization ParseFileType does not know, a `from` the server
    neither has nor can pull, and quantizing a library model (createModel) all fail; the
    same files with a known quantization are created."""
    fake = fake_ollama(models=[BASE_TAG])
    digest = "sha256:" + hashlib.sha256(b"w").hexdigest()
    weights = {"model.safetensors": digest, "config.json": digest}
    refused = [
        ({"files": {"../model.safetensors": digest}}, 400, "file path must be relative"),
        ({"files": {"/etc/model.safetensors": digest}}, 400, "file path must be relative"),
        ({"files": {"weights.bin": digest}}, 400, "unknown type"),
        ({"files": {"model.safetensors": digest}}, 500,
         "open config.json: no such file or directory"),
        ({"files": weights, "quantize": "q5_K_M"}, 500, "unsupported quantization type Q5_K_M "
         "- supported types are F32, F16, Q4_K_S, Q4_K_M, Q8_0"),
        ({"from": "nobody/nothing:1"}, 500, "pull model manifest: file does not exist"),
        ({"from": BASE_TAG, "quantize": "q8_0"}, 500,
         "quantization is only supported for F16 and F32 models"),
    ]
    with httpx.Client(base_url=fake.url) as http:
        assert http.post(f"/api/blobs/{digest}", content=b"w").status_code == 201
        for body, status, error in refused:
            reply = http.post("/api/create", json={"model": "m:1", "stream": False, **body})
            assert (reply.status_code, reply.json()) == (status, {"error": error}), body
        streamed = http.post("/api/create", json={"model": "m:1", "files": weights,
                                                  "quantize": "Q5_K_M"})
        assert streamed.status_code == 200 and "Q5_K_M" in streamed.text.splitlines()[-1]
        assert "m:1" not in fake.models
        for quantize in ("q4_K_M", "q4_k_s", "Q8_0", "f16"):
            reply = http.post("/api/create", json={"model": "m:1", "files": weights,
                                                   "quantize": quantize, "stream": False})
            assert reply.json() == {"status": "success"}, quantize
    assert "m:1" in fake.models


def test_a_quantization_ollama_refuses_is_refused_before_any_work(tmp_path: Path):
    """Ollama would refuse it only at publish, after the fine-tuning and the upload."""
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "finetune",
                           str(tmp_path / "corpus.jsonl"), "--base-model", str(tmp_path),
                           "--out", str(tmp_path / "out"), "--tag", "t:1", "--quantize",
                           "q5_K_M"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2
    assert "Ollama cannot quantize to 'q5_K_M': use one of q4_K_M, q4_K_S, q4_K, q8_0, f16, " \
           "f32 or none" in proc.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(pub.PublishError, match="cannot quantize to 'q3_K'"):
        pub.publish("127.0.0.1:9", tmp_path, TAG, quantize="q3_K")


def test_show_parameters_parse_into_create_parameters():
    text = ('stop                           "<|im_start|>"\n'
            'stop                           "<|im_end|>"\n'
            "temperature                    0.2\n"
            "num_ctx                        8192\n"
            "penalize_newline               false\n")
    assert pub.parse_parameters(text) == {"stop": ["<|im_start|>", "<|im_end|>"],
                                          "temperature": 0.2, "num_ctx": 8192,
                                          "penalize_newline": False}
    assert pub.parse_parameters(None) == {} and pub.parse_parameters("") == {}


def test_the_throughput_benchmark_runs_the_cli_end_to_end(tmp_path):
    """benchmarks/finetune_throughput.py at its smallest: one row per size, from the CLI's own
    train_result.json."""
    out = subprocess.run(
        [sys.executable, "benchmarks/finetune_throughput.py", "--sizes", "32x1",
         "--examples", "2", "--epochs", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"size"')]
    assert row["size"] == "32x1" and row["examples"] == 2
    assert row["tokens"] > 0 and row["tokens_per_s"] > 0 and row["params"] > 0


def test_a_udiff_corpus_trains_a_lora_step(tiny_lm: Path, tmp_path: Path):
    """`export --corpus --edit-format udiff` output fine-tunes as is: the diff is the answer
    the loss is on."""
    from transformers import AutoTokenizer

    from orchestrator.finetune.corpus import export_corpus
    from orchestrator.store.run import read_run
    from tests.test_corpus import NEAR, NET, make_run

    run = read_run(make_run(tmp_path, "r", [("ok", 0.6, NET), ("ok", 0.7, NEAR)]))
    corpus = tmp_path / "udiff.jsonl"
    assert export_corpus([run], corpus, edit_format="udiff") == 2
    diffs = [line for line in corpus.read_text().splitlines()
             if json.loads(line)["source"].get("edit_format") == "udiff"]
    corpus.write_text(diffs[0] + "\n")  # the edit example alone
    (example,) = load_corpus(corpus)
    assert example["completion"][0]["content"].startswith("```diff\n--- a/net.py")
    trainer = train.build_trainer(str(tiny_lm), [example], tmp_path / "t", FAST, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    labels = [t for t in trainer.train_dataset[0]["labels"] if t != -100]
    assert tokenizer.decode(labels).startswith("```diff\n--- a/net.py\n+++ b/net.py\n@@ ")
    result = finetune(tiny_lm, corpus, tmp_path / "out", LoraSettings(lr=5e-3, epochs=1),
                      progress=False)
    assert result.examples == 1 and len(result.losses) == 1
    assert 0 < result.losses[0] < 100 and (result.adapter_dir / "adapter_config.json").is_file()
