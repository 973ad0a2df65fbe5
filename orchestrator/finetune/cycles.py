"""NNGPT's outer loop: search with the current model, admit the good and novel candidates to the
corpus, LoRA fine-tune the base model on the whole corpus, publish the result to Ollama, and
search with it in the next cycle.

Everything lives under `results/<name>/`:

| path | holds |
| --- | --- |
| `cycles.json` | the settings, written once |
| `search.toml` | the search settings every cycle's `orchestrator run` starts from |
| `cycles.jsonl` | a record per step: search, select, train, publishing (begun), publish, cycle |
| `corpus.jsonl` | the prompt-code corpus, each entry with its provenance |
| `cycle_NN/` | that cycle's search: an ordinary run (`orchestrator report` and `show` read it) |
| `cycle_NN.lora/` | its LoRA checkpoints and adapter |

Each step is journaled when it is done, and every step resumes from its own state: the search
with `orchestrator run --resume`, the selection by skipping entries already in the corpus, the
training from its last checkpoint, the export from its merged folder. So `--resume` continues
after Ctrl-C or kill -9 at any point. Every cycle fine-tunes the *base* model on the whole
corpus (NNGPT: "the only changing factor across cycles is the growing training set").
"""

from __future__ import annotations

import ctypes
import dataclasses
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from orchestrator.analysis.cycles import cycle_metrics
from orchestrator.analysis.stats import default_threshold
from orchestrator.config import EDIT_FORMATS
from orchestrator.finetune.corpus import Corpus, seed_pairs
from orchestrator.finetune.publish import Published
from orchestrator.finetune.train import CHECKPOINT_DIR, LoraSettings, check_base, last_checkpoint
from orchestrator.llm.client import default_host
from orchestrator.outcomes import OK
from orchestrator.store.files import append_line, cut_torn_tail, write_atomic
from orchestrator.store.run import Run, read_records, read_run

SETTINGS_FILE = "cycles.json"
SEARCH_FILE = "search.toml"
LOG_FILE = "cycles.jsonl"
CORPUS_FILE = "corpus.jsonl"
MODES = ("fixed", "feedback")
# NNGPT samples with one fixed prompt: no memory, no reference design, no Improver.
FIXED_PROMPT_FLAGS = ("--no-history", "--no-reference", "--no-improver")
PR_SET_PDEATHSIG = 1


class CyclesError(RuntimeError):
    """A cycle cannot go on; the message says why and how to continue."""


@dataclass(frozen=True)
class CycleSettings:
    name: str
    base_model: str  # Hugging Face id or folder: the weights behind base_tag
    base_tag: str  # the Ollama model the first cycle generates with
    cycles: int = 3
    candidates: int = 50  # generated per cycle
    mode: str = "fixed"
    threshold: float | None = None  # None: the dataset's default (NNGPT's for CIFAR/SVHN)
    tau: float = 0.90
    tag_prefix: str | None = None  # default: the base tag's name + "-nas"
    quantize: str | None = "q4_K_M"
    ollama_host: str | None = None
    delete_superseded: bool = False  # delete cycle N-1's tag once cycle N has published
    # What the searches ask for and the corpus teaches: whole files, or edits (corpus.py).
    edit_format: str = "whole"
    lora: LoraSettings = field(default_factory=LoraSettings)

    def validate(self) -> CycleSettings:
        problems = [
            (self.cycles >= 1, "cycles must be at least 1"),
            (self.candidates >= 1, "candidates must be at least 1"),
            (self.mode in MODES, f"mode must be one of {', '.join(MODES)}"),
            (0 < self.tau <= 1, "tau must be in (0, 1]"),
            (self.threshold is None or 0 <= self.threshold <= 1, "threshold must be in [0, 1]"),
            (self.edit_format in EDIT_FORMATS,
             f"edit format must be one of {', '.join(EDIT_FORMATS)}"),
        ]
        for ok, message in problems:
            if not ok:
                raise CyclesError(message)
        return self

    def tag(self, cycle: int) -> str:
        """The model cycle `cycle` publishes: `<prefix>:c<cycle>`."""
        prefix = self.tag_prefix or f"{self.base_tag.split(':', 1)[0]}-nas"
        return f"{prefix}:c{cycle}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CycleSettings:
        lora = LoraSettings(**{**data.get("lora", {}),
                               "target_modules": tuple(data.get("lora", {}).get(
                                   "target_modules", LoraSettings().target_modules))})
        return cls(**{**data, "lora": lora})


@dataclass
class CycleLog:
    """cycles.jsonl: append-only, one fsynced record per finished step."""

    path: Path
    records: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        cut_torn_tail(self.path)  # a kill mid-append: the next record starts on a clean line
        self.records = read_records(self.path)

    def done(self, cycle: int, step: str) -> dict | None:
        return next((r for r in self.records if r["cycle"] == cycle and r["step"] == step), None)

    def add(self, record: dict) -> dict:
        append_line(self.path, orjson.dumps(record) + b"\n")
        self.records.append(record)
        return record


def report_rows(root: Path, threshold: float | None) -> list[dict]:
    """NNGPT's per-cycle table rows (`analysis.cycles.cycle_metrics`) of the finished cycles of a
    cycles directory; `threshold` defaults to the cycles' own, else the dataset's."""
    cycles = Cycles.open(root, say=lambda _: None)
    inputs = []
    for record in cycles.log.records:
        if record["step"] == "cycle":
            run = read_run(root / record["run"])
            inputs.append({**record, "records": run.records, "dataset": run.dataset})
    if not inputs:
        raise CyclesError(f"no finished cycle in {root} yet")
    if threshold is None:
        threshold = cycles.settings.threshold
    if threshold is None:
        threshold = default_threshold(inputs[0]["dataset"])
    return cycle_metrics(inputs, threshold, cycles.settings.tau)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the cycles process dies (even by kill -9), so no search
    outlives it to race the resumed one; its containers follow through their lifeline."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Cycles:
    """One cycles directory, run or resumed."""

    def __init__(self, root: Path, settings: CycleSettings, search_toml: Path,
                 say: Callable[[str], None] = print) -> None:
        self.root, self.settings, self.search_toml, self.say = root, settings, search_toml, say
        self.log = CycleLog(root / LOG_FILE)
        self.corpus = Corpus(root / CORPUS_FILE, tau=settings.tau,
                             edit_format=settings.edit_format)

    @classmethod
    def create(cls, root: Path, settings: CycleSettings, search_toml: Path,
               seeds: list[Path] | None = None, runs: list[Run] | None = None,
               say: Callable[[str], None] = print) -> Cycles:
        """New cycles; the corpus starts from the `seeds` files and the candidates of `runs`
        (selected as in a cycle). The base model and every seed line are checked first."""
        settings.validate()
        if (root / SETTINGS_FILE).exists():
            raise CyclesError(f"{root} already holds cycles: pass --resume to continue them, "
                              "or choose another --name")
        check_base(settings.base_model)
        for seed in seeds or []:
            seed_pairs(seed)
        root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(search_toml, root / SEARCH_FILE)
        cycles = cls(root, settings, root / SEARCH_FILE, say)
        for seed in seeds or []:
            got = cycles.corpus.seed(seed)
            say(f"corpus: {got.admitted} examples from {seed} ({got.duplicates} duplicates)")
        for run in runs or []:
            got = cycles.corpus.select(run, threshold=settings.threshold)
            say(f"corpus: {got.admitted} examples from run {run.name}")
        # Written last: a crash before it leaves nothing that --resume would mistake for cycles.
        cycles.write_settings()
        return cycles

    def write_settings(self) -> None:
        write_atomic(self.root / SETTINGS_FILE, orjson.dumps(self.settings.to_dict(),
                                                             option=orjson.OPT_INDENT_2))

    def rebase(self, base_model: str) -> None:
        """Take a corrected --base-model on --resume, as long as no fine-tuning has used the
        one stored (CyclesError once one has: its adapter is of that base)."""
        old = self.settings.base_model
        if base_model == old:
            return
        if used := self.fine_tuned():
            raise CyclesError(f"--base-model cannot change: {used} was fine-tuned from {old}; "
                              "resume without --base-model, or start new cycles (another --name)")
        check_base(base_model)
        self.settings = dataclasses.replace(self.settings, base_model=base_model)
        self.write_settings()
        self.say(f"base model: {base_model} (was {old})")

    def fine_tuned(self) -> str | None:
        """The first fine-tuning that used the base model (a finished train step or a
        checkpoint of one cut short), None when none has."""
        for cycle in range(1, self.settings.cycles + 1):
            lora = self.root / f"cycle_{cycle:02d}.lora"
            if self.log.done(cycle, "train") or last_checkpoint(lora / CHECKPOINT_DIR):
                return lora.name
        return None

    @classmethod
    def open(cls, root: Path, say: Callable[[str], None] = print) -> Cycles:
        if not (root / SETTINGS_FILE).exists():
            raise CyclesError(f"no cycles to resume at {root}")
        settings = CycleSettings.from_dict(orjson.loads((root / SETTINGS_FILE).read_bytes()))
        return cls(root, settings, root / SEARCH_FILE, say)

    def run(self) -> list[dict]:
        """Run every cycle not yet finished; returns the `cycle` records. The base model is
        checked first while a cycle still needs it (to fine-tune and merge)."""
        if not all(self.log.done(c, "publish") for c in range(1, self.settings.cycles + 1)):
            check_base(self.settings.base_model)
        for cycle in range(1, self.settings.cycles + 1):
            if not self.log.done(cycle, "cycle"):
                self.run_cycle(cycle)
        return [r for r in self.log.records if r["step"] == "cycle"]

    def generator_tag(self, cycle: int) -> str:
        """The model cycle `cycle` generates with: the base, then each cycle's published one."""
        if cycle == 1:
            return self.settings.base_tag
        published = self.log.done(cycle - 1, "publish")
        assert published, f"cycle {cycle - 1} has not published its model"
        return published["tag"]

    def run_cycle(self, cycle: int) -> dict:
        tag = self.generator_tag(cycle)
        self.say(f"cycle {cycle}/{self.settings.cycles}: generating with {tag}")
        search = self.log.done(cycle, "search") or self.log.add(self.search(cycle, tag))
        select = self.log.done(cycle, "select") or self.log.add(self.select(cycle))
        train = self.log.done(cycle, "train") or self.log.add(self.train(cycle))
        publish = self.log.done(cycle, "publish") or self.log.add(self.publish(cycle))
        return self.log.add({
            "cycle": cycle, "step": "cycle", "generator": tag, "run": search["run"],
            "iterations": search["iterations"], "successful": search["successful"],
            "corpus_size": select["corpus_size"], "admitted": select["admitted"],
            "duplicates": select["duplicates"], "below_threshold": select["below_threshold"],
            "train_loss": train["train_loss"], "tag": publish["tag"],
            "digest": publish["digest"],
        })

    def run_dir(self, cycle: int) -> Path:
        return self.root / f"cycle_{cycle:02d}"

    def search(self, cycle: int, tag: str) -> dict:
        """This cycle's candidates: an `orchestrator run` in a child process, resumed if it
        had started."""
        run_dir = self.run_dir(cycle)
        command = [sys.executable, "-m", "orchestrator", "run", "--name", run_dir.name,
                   "--results-dir", str(self.root)]
        if (run_dir / "config.json").exists():
            command.append("--resume")
        else:
            command += ["--config", str(self.search_toml), "--generator-model", tag,
                        "--iterations", str(self.settings.candidates),
                        "--edit-format", self.settings.edit_format]
            if self.settings.mode == "fixed":
                command += list(FIXED_PROMPT_FLAGS)
        if self.settings.ollama_host:
            command += ["--ollama-host", self.settings.ollama_host]
        code = subprocess.run(command, preexec_fn=_die_with_parent).returncode
        if code != 0:
            raise CyclesError(f"the search of cycle {cycle} stopped (exit {code}); fix the "
                              "cause, then continue with --resume")
        records = read_run(run_dir).records
        return {"cycle": cycle, "step": "search", "run": run_dir.name, "generator": tag,
                "iterations": len(records),
                "successful": sum(r.get("status") == OK for r in records)}

    def select(self, cycle: int) -> dict:
        got = self.corpus.select(read_run(self.run_dir(cycle)), cycle=cycle,
                                 threshold=self.settings.threshold)
        self.say(f"cycle {cycle}: {got.admitted} admitted, {got.duplicates} near-duplicates, "
                 f"{got.below_threshold} below the threshold; corpus {len(self.corpus)}")
        return {"cycle": cycle, "step": "select", **dataclasses.asdict(got),
                "corpus_size": len(self.corpus)}

    def train(self, cycle: int) -> dict:
        from orchestrator.finetune.train import finetune

        if len(self.corpus) == 0:
            raise CyclesError("the corpus is empty: no candidate passed the selection; seed it "
                              "(--seed-corpus) or lower --threshold, then --resume")
        result = finetune(self.settings.base_model, self.corpus.path,
                          self.root / f"cycle_{cycle:02d}.lora", self.settings.lora)
        return {"cycle": cycle, "step": "train", "train_loss": result.train_loss,
                "examples": result.examples, "tokens": result.tokens,
                "seconds": result.seconds, "tokens_per_second": result.tokens_per_second,
                "adapter": str(result.adapter_dir.relative_to(self.root))}

    def publish(self, cycle: int) -> dict:
        """Publish the cycle's model: its adapter over the base where Ollama converts it, else
        the merged weights; then delete the tag it supersedes (--delete-superseded).

        A `publishing` record, with the tag's digest on the server before, comes first: a run
        killed after the server created the model but before the `publish` record finds the
        tag changed on resume, and records it without publishing it again."""
        from orchestrator.finetune.publish import (
            adapter_supported,
            listed_digest,
            merge,
            publish,
            publish_adapter,
        )

        settings, tag = self.settings, self.settings.tag(cycle)
        merged_dir = self.root / f"cycle_{cycle:02d}.merged"
        begun = self.log.done(cycle, "publishing")
        if begun and (digest := listed_digest(settings.ollama_host, tag)) != begun["before"] \
                and digest is not None:
            self.say(f"cycle {cycle}: {tag} ({digest[:19]}) was published before the run "
                     "stopped; not publishing it again")
            shutil.rmtree(merged_dir, ignore_errors=True)  # its merge, had it one, is done with
            return {"cycle": cycle, "step": "publish", "tag": tag, "digest": digest,
                    "route": None, "left_bytes": None, "deleted": self.delete_superseded(cycle)}
        if not begun:
            self.log.add({"cycle": cycle, "step": "publishing", "tag": tag,
                          "before": listed_digest(settings.ollama_host, tag)})
        adapter = self.root / self.log.done(cycle, "train")["adapter"]
        if adapter_supported(settings.ollama_host, settings.base_tag):
            done = publish_adapter(settings.ollama_host, adapter, tag, settings.base_tag)
        else:
            self.say(f"cycle {cycle}: merging the adapter into {settings.base_model}")
            merged = merge(settings.base_model, adapter, merged_dir)
            done = publish(settings.ollama_host, merged, tag, settings.base_tag,
                           quantize=settings.quantize)
            shutil.rmtree(merged)  # Ollama holds the model now; a 7B merge is 15 GB
        deleted = self.delete_superseded(cycle)
        self.say(f"cycle {cycle}: published {tag} ({done.digest[:19]}) from its {done.route} "
                 f"{'adapter' if done.route == 'adapter' else 'weights'}")
        self.say(self.footprint(done, deleted))
        return {"cycle": cycle, "step": "publish", "tag": tag, "digest": done.digest,
                "route": done.route, "left_bytes": done.left, "deleted": deleted}

    def delete_superseded(self, cycle: int) -> str | None:
        """With --delete-superseded, delete the previous cycle's tag (the next search uses
        this cycle's); the tag deleted, None when none was."""
        from orchestrator.finetune.publish import delete_model

        if not self.settings.delete_superseded or cycle == 1:
            return None
        old = self.settings.tag(cycle - 1)
        return old if delete_model(self.settings.ollama_host, old) else None

    def footprint(self, done: Published, deleted: str | None) -> str:
        """One line: what the publish left on the Ollama server, and how to reclaim it."""
        host = self.settings.ollama_host or default_host()
        freed = f"deleted {deleted}; " if deleted else ""
        older = "" if self.settings.delete_superseded else \
            "`ollama rm` older cycle tags (or --delete-superseded) frees their layers; "
        f16 = " and F16 intermediate" if done.route == "merged" else ""
        return (f"left on {host}: {_mb(done.left)} in blobs ({_mb(done.uploaded)} uploaded "
                f"and {_mb(done.layers)} of layers{f16}); "
                f"reclaim: {freed}{older}uploads and intermediates go when the Ollama server "
                "restarts (it prunes unused blobs over an hour old)")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
