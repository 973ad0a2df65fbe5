"""LoRA fine-tuning of a causal LM on the NNGPT prompt-code corpus (trl's SFTTrainer + peft).

Each corpus line is `{"messages": [{"role": ..., "content": ...}, ...], ...}` ending in the
assistant's answer (the code). It becomes a conversational prompt-completion example: the
messages before the last are the prompt, the last assistant message the completion. trl renders
both with the base tokenizer's own chat template and computes the loss on the completion only
(the prompt tokens are masked), which works with any template, unlike `assistant_only_loss`,
which needs `{% generation %}` markers in it.

`out_dir` holds everything: `finetune.json` (what is being trained: base, corpus digest,
settings; written first), `checkpoints/` (the trainer's, with optimizer state, every tenth of
the run, the last two kept), `adapter/` (the final LoRA adapter and tokenizer) and, written last
and atomically, `train_result.json`. A call on an `out_dir` with a checkpoint resumes from it;
one with `train_result.json` returns the stored result without training.

torch, transformers, peft, trl and datasets are imported inside the functions: importing this
module needs none of them (the `[finetune]` extra).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.store.files import fsync_dir, sha256_file, write_atomic

EXTRA_HINT = "pip install 'orchestrator[finetune]'"
RUN_FILE = "finetune.json"
RESULT_FILE = "train_result.json"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
SAVES_PER_RUN = 10  # a checkpoint every tenth of the run: a kill loses at most that much
KEEP_CHECKPOINTS = 2  # the newest two: one stays whole while the next is written
LOGS_PER_RUN = 50  # loss log points per run (every step when the run is shorter)
ROLES = ("system", "user", "assistant")
_CHECKPOINT_PREFIX = "checkpoint-"
_TRAINER_STATE = "trainer_state.json"  # the trainer writes it last into a checkpoint


@dataclass(frozen=True)
class LoraSettings:
    """LoRA and training hyperparameters; the defaults are the NNGPT paper's.

    `grad_accum` is 1: with `batch_size` 1 that keeps the paper's optimiser step of one example
    at lr 1e-5. Accumulating would take fewer, larger steps at the same learning rate, a different
    schedule from the paper's, and the corpora (hundreds to thousands of examples) are small
    enough that the number of updates matters more than gradient noise.
    """

    rank: int = 32
    alpha: int = 32
    dropout: float = 0.05
    # every attention and MLP projection of Llama/Qwen-style blocks
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )
    epochs: float = 5
    lr: float = 1e-5
    batch_size: int = 1
    grad_accum: int = 1
    max_length: int = 4096
    load_in_4bit: bool = False
    seed: int = 42


@dataclass
class TrainResult:
    """What `finetune` did.

    `losses` are the logged training losses of the whole run (resumed parts included) and
    `train_loss` their mean; `tokens` the input tokens trained on over the whole run (all epochs).
    `seconds` is the training time of the call that finished the run and `tokens_per_second` the
    tokens it trained on divided by that time.
    """

    adapter_dir: Path
    train_loss: float
    losses: list[float]
    tokens: int
    seconds: float
    tokens_per_second: float
    resumed: bool
    examples: int

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["adapter_dir"] = self.adapter_dir.name  # relative to out_dir: the folder may move
        return data

    @classmethod
    def from_json(cls, out_dir: Path, data: dict[str, Any]) -> TrainResult:
        return cls(
            adapter_dir=out_dir / data["adapter_dir"],
            train_loss=float(data["train_loss"]),
            losses=[float(x) for x in data["losses"]],
            tokens=int(data["tokens"]),
            seconds=float(data["seconds"]),
            tokens_per_second=float(data["tokens_per_second"]),
            resumed=bool(data["resumed"]),
            examples=int(data["examples"]),
        )


class FinetuneError(RuntimeError):
    """Fine-tuning cannot start or failed; the message says why."""


def require_extra() -> None:
    """Raise FinetuneError naming the install command when a fine-tuning library is missing."""
    for module in ("torch", "transformers", "peft", "trl", "datasets", "accelerate"):
        try:
            __import__(module)
        except ImportError as exc:
            raise FinetuneError(f"fine-tuning needs {module}: {EXTRA_HINT}") from exc


# -- the corpus ------------------------------------------------------------------------------
def load_corpus(corpus: Path) -> list[dict[str, list[dict[str, str]]]]:
    """The corpus as conversational prompt-completion examples; FinetuneError when it is missing,
    empty, or a line is not a chat ending in an assistant answer."""
    corpus = Path(corpus)
    if not corpus.is_file():
        raise FinetuneError(f"corpus {corpus} does not exist")
    examples = []
    with corpus.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                examples.append(_example(corpus, number, line))
    if not examples:
        raise FinetuneError(f"corpus {corpus} is empty: nothing to fine-tune on")
    return examples


def _example(corpus: Path, number: int, line: str) -> dict[str, list[dict[str, str]]]:
    where = f"corpus {corpus} line {number}"
    try:
        entry = json.loads(line)
    except ValueError as exc:
        raise FinetuneError(f"{where} is not JSON: {exc}") from exc
    messages = entry.get("messages") if isinstance(entry, dict) else None
    if not isinstance(messages, list) or not messages:
        raise FinetuneError(f'{where} has no "messages" (a list of chat messages)')
    chat = []
    for message in messages:
        if not (isinstance(message, dict) and message.get("role") in ROLES
                and isinstance(message.get("content"), str)):
            raise FinetuneError(f"{where}: each message needs a role ({', '.join(ROLES)}) and "
                                f"a text content, not {message!r:.200}")
        chat.append({"role": message["role"], "content": message["content"]})
    if chat[-1]["role"] != "assistant" or not chat[-1]["content"].strip():
        raise FinetuneError(f"{where}: the last message must be the assistant's answer")
    if len(chat) < 2:
        raise FinetuneError(f"{where}: there is no prompt before the assistant's answer")
    return {"prompt": chat[:-1], "completion": chat[-1:]}


# -- the base model --------------------------------------------------------------------------
def base_reference(base: str | Path) -> str:
    """A local folder (resolved) or a Hugging Face hub id; FinetuneError when `base` names a
    path that does not exist."""
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FinetuneError(f"base model folder {path} has no config.json")
        return str(path.resolve())
    text = str(base)
    if isinstance(base, Path) or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FinetuneError(f"base model {text} not found: no such folder")
    return text


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_base(base: str | Path) -> str:
    """`base_reference`, checked as loading will need it, without loading the weights: a
    folder needs a tokenizer besides its config.json; a hub id must resolve its config.json
    (from the local cache, else the hub). FinetuneError says what is missing."""
    ref = base_reference(base)
    path = Path(ref)
    if path.is_dir():
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise FinetuneError(f"base model folder {path} has no tokenizer (none of "
                                f"{', '.join(TOKENIZER_FILES)})")
        return ref
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise FinetuneError(f"fine-tuning needs huggingface_hub: {EXTRA_HINT}") from exc
    try:
        hf_hub_download(ref, "config.json")
    except Exception as exc:  # offline, unknown id, malformed id: each its own hub error
        raise FinetuneError(f"base model {ref} is neither a model folder nor a Hugging Face "
                            f"model this machine can fetch ({type(exc).__name__}); pass "
                            "--base-model a folder with config.json and the tokenizer") from exc
    return ref


def _load_base(base: str, settings: LoraSettings, dtype: Any, cuda: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": dtype}
    if settings.load_in_4bit:
        kwargs.update(quantization_config=_four_bit(cuda, dtype), device_map={"": 0})
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except OSError as exc:
        raise FinetuneError(f"cannot load base model {base}: not a model folder, and not "
                            f"loadable from the Hugging Face hub ({exc})") from exc
    if not tokenizer.chat_template:
        raise FinetuneError(f"the tokenizer of {base} has no chat template: fine-tune an "
                            "instruct model")
    if tokenizer.pad_token is None:  # batches of more than one need padding
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _four_bit(cuda: bool, dtype: Any) -> Any:
    if not cuda:
        raise FinetuneError("load_in_4bit needs a CUDA GPU (bitsandbytes quantises on CUDA only)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise FinetuneError("load_in_4bit needs bitsandbytes: pip install bitsandbytes") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)


# -- checkpoints and results -----------------------------------------------------------------
def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1).encode())
    fsync_dir(path.parent)


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest whole checkpoint; newer partial ones (a kill during the save) are removed."""
    if not checkpoints.is_dir():
        return None
    found = sorted(
        (int(p.name.removeprefix(_CHECKPOINT_PREFIX)), p) for p in checkpoints.iterdir()
        if p.is_dir() and p.name.startswith(_CHECKPOINT_PREFIX)
        and p.name.removeprefix(_CHECKPOINT_PREFIX).isdigit()
    )
    for _, path in reversed(found):
        try:
            json.loads((path / _TRAINER_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            shutil.rmtree(path, ignore_errors=True)
            continue
        return path
    return None


def _check_run(out_dir: Path, identity: dict[str, Any]) -> None:
    """Write finetune.json, or check that the checkpoints or result in out_dir are of the same
    base, corpus and settings (a folder without either is simply taken over)."""
    run_file = out_dir / RUN_FILE
    trained = (out_dir / RESULT_FILE).is_file() or last_checkpoint(out_dir / CHECKPOINT_DIR)
    if run_file.is_file() and trained:
        stored = json.loads(run_file.read_text(encoding="utf-8"))
        if stored != identity:
            changed = sorted(k for k in identity if stored.get(k) != identity[k])
            raise FinetuneError(
                f"{out_dir} holds a fine-tuning run with a different {', '.join(changed)}; "
                "use another folder, or remove it to train afresh"
            )
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(run_file, identity)


# -- training --------------------------------------------------------------------------------
def finetune(
    base: str | Path,
    corpus: Path,
    out_dir: Path,
    settings: LoraSettings = LoraSettings(),  # noqa: B008 (frozen: safe as a default)
    progress: bool = True,
) -> TrainResult:
    """LoRA fine-tune `base` (a hub id or a local folder) on the chat corpus into `out_dir`.

    Resumes from the newest checkpoint in `out_dir`; returns the stored result without training
    when `out_dir` already holds a finished run. bf16 on a CUDA GPU that supports it, fp32
    otherwise. FinetuneError for a missing or empty corpus, a line without messages, a base
    model that cannot be found, or a missing library (with the install command).
    """
    out_dir = Path(out_dir)
    corpus = Path(corpus)
    examples = load_corpus(corpus)
    base_ref = base_reference(base)
    identity = {"base": base_ref, "corpus_sha256": sha256_file(corpus),
                "settings": json.loads(json.dumps(asdict(settings)))}
    _check_run(out_dir, identity)
    result_file = out_dir / RESULT_FILE
    if result_file.is_file():
        return TrainResult.from_json(out_dir, json.loads(result_file.read_text(encoding="utf-8")))
    require_extra()
    with _quiet(not progress):
        return _train(base_ref, examples, out_dir, settings, progress)


@contextlib.contextmanager
def _quiet(quiet: bool):
    """Silence the libraries' own progress bars (datasets, weight loading) when `quiet`."""
    if not quiet:
        yield
        return
    import datasets
    import transformers

    was_datasets = datasets.is_progress_bar_enabled()
    was_hf = transformers.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_datasets:
            datasets.enable_progress_bars()
        if was_hf:
            transformers.utils.logging.enable_progress_bar()


def run_steps(examples: int, settings: LoraSettings) -> int:
    """Optimiser steps of a run, as the trainer counts them."""
    per_epoch = max(math.ceil(examples / settings.batch_size) // settings.grad_accum, 1)
    return math.ceil(settings.epochs * per_epoch)


def build_trainer(base: str, examples: list[dict], out_dir: Path, settings: LoraSettings,
                  progress: bool) -> Any:
    """trl's SFTTrainer for the run: LoRA on `base`, the prompt-completion examples, loss on
    the completions, checkpoints under out_dir/checkpoints."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    # transformers 5 renamed gradient_checkpointing (the old name warns); older ones lack the new
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    checkpointing = next(n for n in ("activation_checkpointing", "gradient_checkpointing")
                         if n in names)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    model, tokenizer = _load_base(base, settings, torch.bfloat16 if bf16 else torch.float32, cuda)
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules), bias="none",
                      task_type="CAUSAL_LM")
    steps = run_steps(len(examples), settings)
    config = SFTConfig(
        output_dir=str(out_dir / CHECKPOINT_DIR),
        num_train_epochs=settings.epochs,
        learning_rate=settings.lr,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        max_length=settings.max_length,
        completion_only_loss=True,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=bf16,
        fp16=False,
        **{checkpointing: cuda},  # activations of a 7B model at 4096 tokens need it on one GPU
        logging_strategy="steps",
        logging_steps=max(math.ceil(steps / LOGS_PER_RUN), 1),
        save_strategy="steps",
        save_steps=max(math.ceil(steps / SAVES_PER_RUN), 1),
        save_total_limit=KEEP_CHECKPOINTS,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
    )
    try:
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer, peft_config=lora)
    except ValueError as exc:  # e.g. target modules the architecture does not have
        raise FinetuneError(f"cannot set up LoRA on {base}: {exc}") from exc
    if not progress:
        trainer.remove_callback(PrinterCallback)
    return trainer


def _train(base: str, examples: list[dict], out_dir: Path, settings: LoraSettings,
           progress: bool) -> TrainResult:
    from transformers import TrainerCallback

    trainer = build_trainer(base, examples, out_dir, settings, progress)
    _warn_truncated(trainer.train_dataset, settings.max_length)
    checkpoints = out_dir / CHECKPOINT_DIR

    start_tokens: list[int] = []

    class _Session(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # after a checkpoint loads
            start_tokens.append(state.num_input_tokens_seen)

        def on_save(self, args, state, control, **kwargs):  # the checkpoint is whole now
            if progress:
                print(f"fine-tuning: checkpoint at step {state.global_step}/{state.max_steps}",
                      flush=True)

    trainer.add_callback(_Session())
    resume = last_checkpoint(checkpoints)
    if resume and progress:
        print(f"fine-tuning: resuming from {resume.name}", flush=True)
    start = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.monotonic() - start

    adapter_dir = out_dir / ADAPTER_DIR
    staging = out_dir / (ADAPTER_DIR + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(staging, adapter_dir)

    state = trainer.state
    losses = [float(entry["loss"]) for entry in state.log_history if "loss" in entry]
    tokens = int(state.num_input_tokens_seen)
    session_tokens = tokens - (start_tokens[0] if start_tokens else 0)
    result = TrainResult(
        adapter_dir=adapter_dir,
        train_loss=sum(losses) / len(losses) if losses else math.nan,
        losses=losses,
        tokens=tokens,
        seconds=seconds,
        tokens_per_second=session_tokens / seconds if seconds > 0 else 0.0,
        resumed=resume is not None,
        examples=len(examples),
    )
    _write_json_atomic(out_dir / RESULT_FILE, result.to_json())
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: the adapter is all that is needed
    return result


def _warn_truncated(dataset: Any, max_length: int) -> None:
    """Warn when examples reach max_length: trl cut them there, answers included."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    cut = sum(n >= max_length for n in lengths)
    if cut:
        warnings.warn(f"{cut} of {len(lengths)} corpus examples reach max_length={max_length} "
                      "tokens and were cut there; raise max_length to train on all of them",
                      stacklevel=3)
