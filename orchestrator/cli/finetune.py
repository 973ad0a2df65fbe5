"""The fine-tuning commands: `finetune` (one LoRA fine-tuning, optionally published) and
`cycles` (NNGPT's search, fine-tune and publish cycles)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.assembly import UserError
from orchestrator.cli.common import EDIT_CORPUS_HELP, OllamaHostOpt, Opt, command, console, fail
from orchestrator.config import ConfigError, build, load_toml, plain_name
from orchestrator.llm.client import LLMError

commands = typer.Typer()

RankOpt = Annotated[int, Opt(help="LoRA rank.")]
AlphaOpt = Annotated[int, Opt(help="LoRA alpha.")]
EpochsOpt = Annotated[float, Opt("--epochs", help="Fine-tuning epochs over the corpus.")]
LrOpt = Annotated[float, Opt("--lr", help="Fine-tuning learning rate.")]
FourBitOpt = Annotated[bool, Opt("--load-in-4bit", help="QLoRA: load the base in 4 bits (GPU).")]


def _quantize(value: str | None) -> str | None:
    """Refuse at once a quantization Ollama would refuse only after the fine-tuning."""
    from orchestrator.finetune.publish import PublishError, check_quantize

    try:
        check_quantize(None if value is None or value == "none" else value)
    except PublishError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


QuantizeOpt = Annotated[str | None, Opt(
    help="Ollama quantization of the published model (q4_K_M, q4_K_S, q8_0, f16, f32; "
         "`none` keeps bf16).", callback=_quantize)]


@command(commands)
def finetune(
    corpus: Annotated[Path, typer.Argument(help="Prompt-code corpus (JSONL, `messages`).")],
    base_model: Annotated[str, Opt(help="Hugging Face id or folder of the base model (the "
                                        "weights behind --base-tag).")],
    out: Annotated[Path, Opt(help="Where the checkpoints and the adapter go.")],
    tag: Annotated[str | None, Opt(help="Publish the merged model to Ollama as this tag.")]
    = None,
    base_tag: Annotated[str | None, Opt(help="Ollama model whose chat template and parameters "
                                             "the published one takes.")] = None,
    quantize: QuantizeOpt = "q4_K_M",
    ollama_host: OllamaHostOpt = None,
    rank: RankOpt = 32, alpha: AlphaOpt = 32, epochs: EpochsOpt = 5, lr: LrOpt = 1e-5,
    load_in_4bit: FourBitOpt = False,
) -> None:
    """LoRA fine-tune a base model on a corpus (resumes from --out), and optionally publish
    the merged model to Ollama."""
    from orchestrator.finetune.publish import merge, publish
    from orchestrator.finetune.train import FinetuneError, LoraSettings
    from orchestrator.finetune.train import finetune as train

    lora = LoraSettings(rank=rank, alpha=alpha, epochs=epochs, lr=lr, load_in_4bit=load_in_4bit)
    try:
        result = train(base_model, corpus, out, lora)
        console.print(f"adapter: {result.adapter_dir} (loss {result.train_loss:.4f}, "
                      f"{result.tokens_per_second:.0f} tokens/s)", highlight=False)
        if tag:
            merged = merge(base_model, result.adapter_dir, out / "merged")
            done = publish(ollama_host, merged, tag, base_tag,
                           quantize=None if quantize == "none" else quantize)
            console.print(f"published {tag} ({done.digest})", highlight=False)
    except (FinetuneError, LLMError, OSError) as exc:
        raise fail(str(exc)) from None


@command(commands)
def cycles(
    name: Annotated[str, Opt(help="Cycles directory under --results-dir.")],
    config: Annotated[Path | None, Opt(help="TOML search settings of every cycle (as for "
                                             "`run`).")] = None,
    base_model: Annotated[str | None, Opt(help="Hugging Face id or folder of the base model "
                                               "behind --base-tag (with --resume: a "
                                               "correction, until a cycle fine-tunes).")]
    = None,
    base_tag: Annotated[str | None, Opt(help="Ollama model the first cycle generates with.")]
    = None,
    cycles_: Annotated[int, Opt("--cycles", help="Number of cycles.")] = 3,
    candidates: Annotated[int, Opt(help="Candidates generated per cycle.")] = 50,
    mode: Annotated[str, Opt(help="fixed (NNGPT's fixed prompt) or feedback (the "
                                  "feedback-memory search).")] = "fixed",
    threshold: Annotated[float | None, Opt(help="Accuracy to enter the corpus (default per "
                                                "dataset: CIFAR-10 0.40, CIFAR-100 0.20, "
                                                "SVHN 0.70).")] = None,
    tau: Annotated[float, Opt(help="Novelty: MinHash-Jaccard similarity below which a "
                                   "candidate is new.")] = 0.90,
    seed_corpus: Annotated[list[Path] | None, Opt(help="JSONL of prompt-code pairs to start "
                                                       "the corpus from.")] = None,
    from_run: Annotated[list[str] | None, Opt(help="Earlier run whose candidates start the "
                                                   "corpus.")] = None,
    tag_prefix: Annotated[str | None, Opt(help="Published tags are PREFIX:cN (default: the "
                                               "base tag's name + -nas).")] = None,
    quantize: QuantizeOpt = "q4_K_M",
    ollama_host: OllamaHostOpt = None,
    results_dir: Annotated[Path, Opt(help="Where the cycles directory goes.")] = Path("results"),
    delete_superseded: Annotated[bool, Opt("--delete-superseded", help="Delete cycle N-1's "
                                           "Ollama tag once cycle N has published.")] = False,
    edit_format: Annotated[str, Opt(help="whole, search-replace or udiff: what each cycle's "
                                         "search asks for (--edit-format of run) and "
                                         + EDIT_CORPUS_HELP[0].lower() + EDIT_CORPUS_HELP[1:])]
    = "whole",
    rank: RankOpt = 32, alpha: AlphaOpt = 32, epochs: EpochsOpt = 5, lr: LrOpt = 1e-5,
    load_in_4bit: FourBitOpt = False,
    resume: Annotated[bool, Opt("--resume", help="Continue the cycles --name.")] = False,
) -> None:
    """NNGPT fine-tuning cycles: search, admit good and novel candidates to the corpus, LoRA
    fine-tune, publish to Ollama, and search with the new model in the next cycle."""
    from orchestrator.finetune.corpus import CorpusError
    from orchestrator.finetune.cycles import Cycles, CyclesError, CycleSettings
    from orchestrator.finetune.train import FinetuneError, LoraSettings
    from orchestrator.store.run import read_run

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False)

    try:
        root = results_dir / plain_name(name)
        if resume:
            cycles = Cycles.open(root, say)
            if base_model:
                cycles.rebase(base_model)
        else:
            if not (config and base_model and base_tag):
                raise UserError("new cycles need --config, --base-model and --base-tag")
            cfg = build(load_toml(config), {})
            settings = CycleSettings(
                name=name, base_model=base_model, base_tag=base_tag, cycles=cycles_,
                candidates=candidates, mode=mode, threshold=threshold, tau=tau,
                tag_prefix=tag_prefix, quantize=None if quantize == "none" else quantize,
                ollama_host=ollama_host or cfg.ollama_host, delete_superseded=delete_superseded,
                edit_format=edit_format,
                lora=LoraSettings(rank=rank, alpha=alpha, epochs=epochs, lr=lr,
                                  load_in_4bit=load_in_4bit))
            runs = [read_run(r, results_dir) for r in from_run or []]
            cycles = Cycles.create(root, settings, config, seed_corpus, runs, say)
        done = cycles.run()
    except (CyclesError, ConfigError, UserError, LLMError, FileNotFoundError,
            FinetuneError, CorpusError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        console.print(f"\nstopped; continue with: orchestrator cycles --name {name} --resume")
        raise typer.Exit(130) from None
    last = done[-1]
    console.print(f"done: {len(done)} cycles; corpus {last['corpus_size']}; the generator is "
                  f"now {last['tag']}", highlight=False)
