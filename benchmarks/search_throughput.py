"""Search throughput: the real `orchestrator run` end to end against a scripted Ollama server.

    .venv/bin/python benchmarks/search_throughput.py [--parallel 1,2,4,8] [--iterations K]
        [--latency 0|7b|7b-fixed] [--device auto|cpu|cuda] [--quick] [--json PATH]
        [--edit-format whole|search-replace|udiff]

For each N in --parallel it runs `python -m orchestrator run --parallel N` (a subprocess, the
product's CLI) on real Fashion-MNIST against `tests.fake_ollama.FakeOllama`, started in this
process on loopback. The server answers every chain's generation requests from the same
deterministic cycle of replies: the reference nets (benchmarks/reference_nets.py), each of which
must come back `ok`, interleaved with broken candidates of known failure classes. A request's
place in the cycle is keyed on its `options.seed` (chain c's seeds are run seed + c x 1,000,000 +
its call counter), so iteration k of every chain gets cycle entry k-1 and every status is known.

With `--edit-format search-replace` or `udiff` the run asks for edits, and every reply after
the first is an edit, in that format, of the code the prompt tells the model to edit (read from
the prompt): a valid entry of the cycle adds a learnable input gate to that code (and repairs
what the broken entries broke), the broken ones are an edit whose old text is not there
(`edit_error`), one that breaks the syntax, and one that renames Net (`contract_error`). The
replies' tokens are then what edits of that size take; the summary prints generated tokens per
iteration.

With `--latency 7b` the server shares one GPU's decoding between its parallel requests, as a
real one does (`tests.fake_ollama.Throughput`: tokens/s for one stream, a ceiling for all of
them together, a time per prompt token; OLLAMA_NUM_PARALLEL = N slots); `7b-fixed` is the older
fixed latency per call, whatever the concurrency.

Prints iterations/hour per N (and its ratio to N=1), every iteration's status against its
expectation, the time an ok iteration waited for its sandbox beyond its own training and
prediction, and the model loads the server saw. Exit code 1 when a status differs from its
expectation, a run fails, or --max-reloads is exceeded. See benchmarks/README.md.

The host never imports torch (a subprocess probes CUDA for --device auto).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks import reference_nets  # noqa: E402
from orchestrator import outcomes as fc  # noqa: E402
from orchestrator.config import EDIT_FORMATS  # noqa: E402
from orchestrator.data import datasets  # noqa: E402
from orchestrator.search.edits import render_edit  # noqa: E402
from orchestrator.search.roles import CHAIN_SEED_STRIDE  # noqa: E402
from orchestrator.store.journal import Journal  # noqa: E402
from tests import replies  # noqa: E402
from tests.fake_ollama import CHARS_PER_TOKEN, FakeOllama, Reply, Throughput  # noqa: E402

DATASET = "fashionmnist"
FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_DIR = REPO / ".cache" / "benchmarks" / "datasets"
MODEL = "coder:bench"  # both roles on one model, the product's default: reloads would show
# A 7B model on one GPU, its decoding shared by the parallel requests: 60 tokens/s for one
# stream, 150 for all together (batched decoding gains about 2.5x), 2000 prompt tokens/s. A
# single chain's iteration (about 620 generated and 2800 prompt tokens here) then takes about
# as long as under `7b-fixed`.
SHARED = {"7b": Throughput(stream=60.0, aggregate=150.0, prompt=2000.0)}
# Seconds per generation and per diagnosis, whatever the concurrency.
FIXED = {"0": (0.0, 0.0), "7b-fixed": (8.0, 3.0)}
LATENCIES = (*FIXED, *SHARED)
BROKEN = (  # (name, reply, expected failure class) for 1x28x28 inputs, 10 classes
    ("shape_mismatch", replies.SHAPE_MISMATCH_NET, fc.SHAPE_ERROR),
    ("syntax_error", replies.SYNTAX_ERROR_REPLY, fc.SYNTAX_ERROR),
    ("no_net_class", replies.NO_NET_CLASS, fc.CONTRACT_ERROR),
)
EDIT_BROKEN = (  # (name, expected failure class) of the broken edits (see `edit_reply`)
    ("edit_missing", fc.EDIT_ERROR), ("edit_syntax", fc.SYNTAX_ERROR),
    ("edit_rename", fc.CONTRACT_ERROR),
)
SHORT = {fc.OK: "ok", fc.SHAPE_ERROR: "shape", fc.SYNTAX_ERROR: "syntax",
         fc.CONTRACT_ERROR: "contract", fc.EDIT_ERROR: "edit", "missing": "-"}
# A diagnosis of a 7B model's usual length (about 250 tokens): the prompts then grow with the
# memory window as they do in a real run, which is what used to change num_ctx between calls.
REASON = ("The network reaches its accuracy with few parameters, but the first two stages "
          "downsample early and the classifier sees a small, heavily pooled feature map, so "
          "fine texture that separates similar classes is lost before the deeper layers. ") * 2
IDEA = "Wide residual networks: fewer, wider stages with identity shortcuts train fast. " * 2
SUGGESTION = ("Keep the first stage at full resolution with 32 channels and two 3x3 "
              "convolutions with batch norm, add a residual block per stage, widen the last "
              "stage to 128 channels, use global average pooling and one linear layer, and "
              "keep dropout below 0.2 so that one epoch is enough to fit. ") * 2
PROBE_CUDA = "import torch; print(torch.cuda.is_available())"


# ---------------------------------------------------------------------------------- settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parallel", help="comma list of --parallel N to run (default 1,2,4,8 on "
                   "CUDA, 1,2,4 on CPU, 1,2 with --quick)")
    p.add_argument("--iterations", type=int, help="iterations per chain (default: one pass "
                   "through the reply cycle on CUDA, 4 on CPU, 3 with --quick)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="passed to `orchestrator run --device`")
    p.add_argument("--latency", choices=LATENCIES, default="0",
                   help="scripted LLM: 0 (instant), 7b (one GPU's decoding shared by the "
                   "parallel requests: 60 tokens/s a stream, 150 in all, 2000 prompt tokens/s) "
                   "or 7b-fixed (8 s per generation, 3 s per diagnosis at any concurrency)")
    p.add_argument("--gen-latency", type=float, help="seconds per generation (overrides "
                   "--latency)")
    p.add_argument("--diag-latency", type=float, help="seconds per diagnosis (overrides "
                   "--latency)")
    p.add_argument("--nets", help=f"valid reference nets in the cycle, comma list of "
                   f"{','.join(reference_nets.NAMES)} (default: all on CUDA, tiny,vgg on CPU, "
                   "tiny with --quick)")
    p.add_argument("--train-samples", type=int, help="training subset (default 2000 on CPU, "
                   "1000 with --quick, the full split on CUDA)")
    p.add_argument("--test-samples", type=int, help="test subset (default 500 / 200 / full)")
    p.add_argument("--quick", action="store_true", help="smallest useful run (CI smoke test)")
    p.add_argument("--sandbox", choices=("local", "docker"), default="local")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="ray: each N runs on a fresh ray.cluster_utils.Cluster of N simulated "
                   "nodes (one CPU each, a head that runs nothing)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per candidate")
    p.add_argument("--memory", default="8g", help="memory limit per candidate")
    p.add_argument("--seed", type=int, default=42, help="run seed")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="dataset cache (Fashion-MNIST is prepared there if missing)")
    p.add_argument("--from", dest="source", type=Path, default=FASHION_SOURCE,
                   help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--results-dir", type=Path, help="where the runs are journaled (default: a "
                   "temporary folder, removed after a passing benchmark)")
    p.add_argument("--max-reloads", type=int, help="fail when a run's model reloads exceed this")
    p.add_argument("--json", type=Path, help="write machine-readable results here")
    p.add_argument("--edit-format", choices=EDIT_FORMATS, default="whole",
                   help="what the Code Generator is asked for (orchestrator run "
                   "--edit-format); the replies are edits in that format (see above)")
    return p.parse_args(argv)


def cuda_available() -> bool:
    """Whether this interpreter's torch sees CUDA, asked in a subprocess (no torch here)."""
    try:
        out = subprocess.run([sys.executable, "-c", PROBE_CUDA], capture_output=True, text=True,
                             timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip().endswith("True")


def resolve_settings(args: argparse.Namespace, cuda: bool) -> SimpleNamespace:
    """Defaults by device and --quick; explicit flags win."""
    full = (args.device if args.device != "auto" else ("cuda" if cuda else "cpu")) == "cuda"
    if args.quick:
        nets, train, test, par = "tiny", 1000, 200, "1,2"
    elif full:
        nets, train, test, par = ",".join(reference_nets.NAMES), None, None, "1,2,4,8"
    else:
        nets, train, test, par = "tiny,vgg", 2000, 500, "1,2,4"
    nets_list = [n.strip() for n in (args.nets or nets).split(",") if n.strip()]
    gen, diag = FIXED.get(args.latency, (0.0, 0.0))
    cycle_len = len(build_cycle(nets_list))
    default_iterations = 3 if args.quick else (cycle_len if full else 4)
    return SimpleNamespace(
        cuda=full, nets=nets_list,
        parallel=[int(n) for n in (args.parallel or par).split(",") if n.strip()],
        iterations=args.iterations or default_iterations,
        train=args.train_samples if args.train_samples is not None else train,
        test=args.test_samples if args.test_samples is not None else test,
        gen_latency=args.gen_latency if args.gen_latency is not None else gen,
        diag_latency=args.diag_latency if args.diag_latency is not None else diag,
        throughput=SHARED.get(args.latency),
    )


# ---------------------------------------------------------------------------- reply cycle


def within_schema(text: str, fmt: object) -> str:
    """The diagnosis as a model under the format's grammar writes it: each string field cut to
    its property's maxLength (Ollama's schema grammar allows no more)."""
    if not isinstance(fmt, dict):
        return text
    value = json.loads(text)
    for key, prop in (fmt.get("properties") or {}).items():
        bound = prop.get("maxLength") if isinstance(prop, dict) else None
        if isinstance(value.get(key), str) and isinstance(bound, int):
            value[key] = value[key][:bound]
    return json.dumps(value)


@dataclass(frozen=True)
class Entry:
    """One generator reply of the cycle and the status its iteration must end with."""

    name: str
    content: str
    expected: str


def build_cycle(nets: list[str], in_channels: int = 1, num_classes: int = 10,
                edit_format: str = "whole") -> list[Entry]:
    """Valid reference nets interleaved with broken candidates: v0 b0 v1 b1 ... (each once).
    Under an edit format a valid entry's net answers only a prompt without code to edit, and
    the broken entries are broken edits (their content is made from the prompt)."""
    valid = [Entry(n, replies.prose_wrapped(reference_nets.source(n, in_channels, num_classes)),
                   fc.OK) for n in nets]
    broken = [Entry(*b) for b in BROKEN] if edit_format == "whole" else \
        [Entry(name, "", expected) for name, expected in EDIT_BROKEN]
    cycle: list[Entry] = []
    for i in range(max(len(valid), len(broken))):
        cycle += [valid[i % len(valid)], broken[i % len(broken)]]
    return cycle


def expected_entry(cycle: list[Entry], iteration: int) -> Entry:
    """The entry every chain's 1-based `iteration` is answered with."""
    return cycle[(iteration - 1) % len(cycle)]


class Responder:
    """FakeOllama's reply function: generation requests walk the cycle per chain, by seed.

    A chain's k-th distinct generator seed gets cycle entry k-1; a retried request (same seed)
    gets the same entry. Improver requests (they carry `format`) get a well-formed diagnosis.
    """

    def __init__(self, cycle: list[Entry], run_seed: int, gen_latency: float = 0.0,
                 diag_latency: float = 0.0, edit_format: str = "whole") -> None:
        self.cycle, self.run_seed, self.edit_format = cycle, run_seed, edit_format
        self.gen_latency, self.diag_latency = gen_latency, diag_latency
        self._lock = threading.Lock()
        self._positions: dict[tuple[int, int], int] = {}  # (chain, seed) -> cycle position
        self._next: dict[int, int] = {}  # chain -> next position
        self.diagnoses = 0
        self.sent: dict[tuple[int, int], str] = {}  # (chain, seed) -> the reply sent
        self.diagnosis_tokens: list[float] = []  # paced tokens of each diagnosis sent

    def __call__(self, body: dict) -> Reply:
        if body.get("format"):
            with self._lock:
                self.diagnoses += 1
                k = self.diagnoses
            text = within_schema(replies.diagnosis_json(
                f"problem {k}: {REASON}", f"idea {k}: {IDEA}", f"suggestion {k}: {SUGGESTION}"),
                body["format"])
            with self._lock:
                self.diagnosis_tokens.append(paced_tokens(text))
            return Reply(content=text, delay=self.diag_latency)
        seed = int((body.get("options") or {}).get("seed", 0))
        entry = self.cycle[self.position(seed)]
        content = entry.content
        if self.edit_format != "whole":
            content = edit_reply(entry, body["messages"][-1]["content"], self.edit_format, seed)
        with self._lock:
            self.sent[(seed - self.run_seed) // CHAIN_SEED_STRIDE, seed] = content
        return Reply(content=content, delay=self.gen_latency)

    def replies(self) -> dict[tuple[int, int], str]:
        """The reply sent for each (chain, iteration), in each chain's seed order."""
        out: dict[tuple[int, int], str] = {}
        for (chain, _), text in sorted(self.sent.items()):
            out[chain, 1 + sum(c == chain for c, _ in out)] = text
        return out

    def position(self, seed: int) -> int:
        """The cycle position for a generator request with this seed."""
        chain = (seed - self.run_seed) // CHAIN_SEED_STRIDE
        with self._lock:
            if (chain, seed) not in self._positions:
                k = self._next.get(chain, 0)
                self._positions[chain, seed] = k % len(self.cycle)
                self._next[chain] = k + 1
            return self._positions[chain, seed]


# ---------------------------------------------------------------------------- edits
EDIT_TARGET = re.compile(r"^Edit the .*?\(iteration (\d+)\)", re.MULTILINE)
NET_HEAD = "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
FORWARD = "    def forward(self, x):\n"
RENAMED = "class Model(nn.Module):  # renamed\n"
BROKEN_MARK = "  # rescaled"
MISSING_OLD = ("        self.head = nn.Sequential(\n            nn.Linear(512, 256), "
               "nn.ReLU(inplace=True),\n            nn.Linear(256, NUM_CLASSES),\n        )")


def prompt_base(prompt: str) -> str | None:
    """The code the prompt tells the model to edit, None when it asks for a whole file."""
    target = EDIT_TARGET.search(prompt)
    if target is None:
        return None
    block = re.search(rf"\(iteration {target[1]}, result: .*?\):\n```python\n(.*?)\n```",
                      prompt, re.DOTALL)
    return block[1] if block else None


def repaired(code: str) -> str:
    """`code` without what the broken edits did to it."""
    lines = [ln for ln in code.split("\n") if not ln.endswith(BROKEN_MARK)]
    return "\n".join(lines).replace(RENAMED, "class Net(nn.Module):\n")


def edit_reply(entry: Entry, prompt: str, edit_format: str, seed: int) -> str:
    """The reply to a generation request under an edit format: the entry's whole net when the
    prompt has no code to edit, else the entry's edit of that code (see the module doc)."""
    base = prompt_base(prompt)
    if base is None:
        return entry.content or replies.NO_CODE_REPLY
    fixed = repaired(base)
    if entry.expected == fc.OK:  # a learnable input gate, in __init__ and forward of Net
        target = fixed.replace(NET_HEAD, NET_HEAD + f"        self.gate{seed} = "
                               "nn.Parameter(torch.ones(1))\n")
        at = target.find(FORWARD, target.find("class Net("))
        if at >= 0:
            at += len(FORWARD)
            target = target[:at] + f"        x = x * self.gate{seed}\n" + target[at:]
    elif entry.expected == fc.SYNTAX_ERROR:
        target = fixed.replace(NET_HEAD, NET_HEAD + f"        self.scale = (2.0{BROKEN_MARK}\n")
    elif entry.expected == fc.CONTRACT_ERROR:
        target = fixed.replace("class Net(nn.Module):\n", RENAMED)
    else:  # an edit of lines the code does not have
        missing = MISSING_OLD.replace("ReLU(inplace=True),", "ReLU(inplace=True), nn.Dropout(0.3),")
        block = (f"<<<<<<< SEARCH\n{MISSING_OLD}\n=======\n{missing}\n>>>>>>> REPLACE"
                 if edit_format == "search-replace" else
                 "```diff\n@@ ... @@\n" + "\n".join(f"-{ln}" for ln in MISSING_OLD.split("\n"))
                 + "\n" + "\n".join(f"+{ln}" for ln in missing.split("\n")) + "\n```")
        return f"A dropout in the head regularises it:\n\n{block}\n"
    edit = render_edit(base, target, edit_format)
    return f"Here is the change to the code:\n\n{edit}\n" if edit else entry.content


# ---------------------------------------------------------------------------- checking


def check_records(records: list[dict], run_dir: Path, cycle: list[Entry], chains: int,
                  iterations: int, sent: dict[tuple[int, int], str] | None = None) -> list[dict]:
    """One row per (chain, iteration): status, expectation and whether they match.

    The expectation is the cycle entry for the iteration; the journaled raw reply must be that
    entry's text (`sent`, the replies made from the prompts, under an edit format) so a mix-up
    of replies cannot pass, and its status the entry's status.
    """
    by_key = {(r.get("chain", 0), r["iteration"]): r for r in records}
    rows = []
    for chain in range(chains):
        for i in range(1, iterations + 1):
            entry, record = expected_entry(cycle, i), by_key.get((chain, i))
            row = {"chain": chain, "iteration": i, "net": entry.name,
                   "expected": entry.expected, "status": "missing", "match": False}
            if record is not None:
                path = run_dir / (record.get("reply_file") or "-")
                reply = path.read_text() if path.is_file() else None
                wanted = (sent or {}).get((chain, i), entry.content)
                row.update(status=record["status"], reply_matches=reply == wanted)
                row["match"] = row["reply_matches"] and record["status"] == entry.expected
            rows.append(row)
    return rows


def mismatches(rows: list[dict]) -> list[str]:
    """Readable lines for the rows that differ from their expectation."""
    out = []
    for r in rows:
        if r["match"]:
            continue
        why = "" if r.get("reply_matches", True) else " (the journaled reply is not its entry's)"
        out.append(f"chain {r['chain']} iteration {r['iteration']} ({r['net']}): "
                   f"{r['status']}, expected {r['expected']}{why}")
    return out


def sandbox_waits(records: list[dict]) -> list[float]:
    """Per ok record: evaluate seconds beyond the runner's own training and prediction."""
    waits = []
    for r in records:
        m = r.get("metrics") or {}
        if r["status"] == fc.OK and "train_seconds" in m and "predict_seconds" in m:
            waits.append(r["timings"]["evaluate"] - m["train_seconds"] - m["predict_seconds"])
    return waits


def steady_per_hour(records: list[dict]) -> float | None:
    """Iterations/hour from the first finished iteration to the last (start-up excluded)."""
    times = sorted(r["time"] for r in records)
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) * 3600 / (times[-1] - times[0])


def median_timings(records: list[dict]) -> dict[str, float | None]:
    """Median seconds per iteration of each phase, and of the runners' warm-up (off the path)."""
    out = {k: median([r["timings"].get(k) for r in records]) for k in
           ("generate", "evaluate", "improve")}
    for key, metric in (("warmup", "warmup_seconds"), ("ready_wait", "ready_wait_s"),
                        ("pool", "pool_depth"), ("ray_overhead", "ray_overhead_s")):
        out[key] = median([(r.get("metrics") or {}).get(metric) for r in records])
    return out


def llm_bound_per_hour(prompt_tokens: float, reply_tokens: float,
                       throughput: Throughput | None, n: int) -> float | None:
    """Iterations/hour of n chains were the LLM the only cost, under the token-rate model: an
    iteration's prompts (both roles, `prompt_tokens`) take 1 / `prompt` s a token, its replies
    (`reply_tokens`) decode at the rate of n streams at once."""
    if throughput is None:
        return None
    seconds = prompt_tokens / throughput.prompt + reply_tokens / throughput.rate(n)
    return n * 3600 / seconds if seconds > 0 else None


def paced_tokens(text: str) -> float:
    """A reply's tokens as the scripted server paces them (CHARS_PER_TOKEN a token)."""
    return len(text) / CHARS_PER_TOKEN


def mean_or_0(values: list[float]) -> float:
    return statistics.mean(values) if values else 0.0


def median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------- runs


def cli_command(cfg: SimpleNamespace, args: argparse.Namespace, n: int, url: str,
                results: Path, ray_address: str | None = None) -> list[str]:
    """The `orchestrator run` command line for --parallel n."""
    cmd = [sys.executable, "-m", "orchestrator", "run", "--dataset", DATASET,
           "--iterations", str(cfg.iterations), "--parallel", str(n),
           "--sandbox", args.sandbox, "--device", args.device,
           "--generator-model", MODEL, "--improver-model", MODEL, "--no-pull",
           "--ollama-host", url, "--data-dir", str(args.data_dir),
           "--results-dir", str(results), "--name", f"parallel-{n}",
           "--timeout", f"{args.timeout:g}", "--memory", args.memory, "--seed", str(args.seed)]
    if cfg.train is not None:
        cmd += ["--train-samples", str(cfg.train)]
    if cfg.test is not None:
        cmd += ["--test-samples", str(cfg.test)]
    if ray_address:
        cmd += ["--executor", "ray", "--ray-address", ray_address]
    if args.edit_format != "whole":
        cmd += ["--edit-format", args.edit_format]
    return cmd


@contextlib.contextmanager
def simulated_nodes(n: int, executor: str):
    """The address of a Ray cluster of n one-CPU nodes on this machine (None: no Ray)."""
    if executor != "ray":
        yield None
        return
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(n):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def run_cli(cmd: list[str], log: Path, limit: float) -> tuple[int, float]:
    """Run the CLI with its output in `log`; (exit code, wall seconds)."""
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: the CLI removes its sandboxes on the way out
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = -1
        return rc, time.perf_counter() - started


def run_one(n: int, cfg: SimpleNamespace, args: argparse.Namespace, cycle: list[Entry],
            results: Path) -> dict:
    """One `orchestrator run --parallel n` against a fresh scripted server, checked."""
    responder = Responder(cycle, args.seed, cfg.gen_latency, cfg.diag_latency, args.edit_format)
    with FakeOllama(models=[MODEL], default=responder, throughput=cfg.throughput,
                    num_parallel=n) as server, simulated_nodes(n, args.executor) as address:
        cmd = cli_command(cfg, args, n, server.url, results, address)
        print(f"$ {shlex.join(cmd)}", flush=True)
        limit = cfg.iterations * (args.timeout + cfg.gen_latency + cfg.diag_latency + 60) + 600
        rc, wall = run_cli(cmd, results / f"parallel-{n}.log", limit)
        loads, reloads = server.loads(), server.reloads()
    run_dir = results / f"parallel-{n}"
    records = Journal(run_dir).records()
    sent = responder.replies() if args.edit_format != "whole" else None
    rows = check_records(records, run_dir, cycle, n, cfg.iterations, sent)
    tokens = [paced_tokens(text) for text in responder.sent.values()]
    prompts = [sum(c.get("prompt_tokens") or 0 for c in (r.get("llm") or {}).values() if c)
               for r in records]
    replied = mean_or_0(tokens) + mean_or_0(responder.diagnosis_tokens)
    waits = sandbox_waits(records)
    return {
        "n": n, "command": cmd, "returncode": rc, "wall_seconds": wall,
        "iterations": len(records), "ok": sum(r["status"] == fc.OK for r in records),
        "per_hour": len(records) * 3600 / wall if wall > 0 else None,
        "steady_per_hour": steady_per_hour(records),
        "wait": {"median": median(waits), "max": max(waits, default=None), "count": len(waits)},
        "timings_median": median_timings(records), "loads": loads, "reloads": reloads,
        "tokens_per_reply": statistics.mean(tokens) if tokens else None,
        "prompt_tokens_per_iteration": mean_or_0(prompts),
        "llm_bound_per_hour": llm_bound_per_hour(mean_or_0(prompts), replied, cfg.throughput,
                                                 n),
        "rows": rows, "mismatches": mismatches(rows),
        "log_tail": tail(results / f"parallel-{n}.log") if rc != 0 else None,
    }


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def failures(runs: list[dict], max_reloads: int | None) -> list[str]:
    """Why the benchmark fails: runs that exited non-zero, mismatched statuses, reloads."""
    out = []
    for run in runs:
        n = run["n"]
        if run["returncode"] != 0:
            out.append(f"N={n}: orchestrator run exited {run['returncode']}")
        out += [f"N={n}: {m}" for m in run["mismatches"]]
        if max_reloads is not None and run["reloads"] > max_reloads:
            out.append(f"N={n}: {run['reloads']} model reloads > --max-reloads {max_reloads}")
    return out


# ---------------------------------------------------------------------------------- output


def fmt(v: float | None, width: int, spec: str = ".1f") -> str:
    return f"{'-' if v is None else format(v, spec):>{width}}"


def print_summary(runs: list[dict]) -> None:
    base = next((r["per_hour"] for r in runs if r["n"] == 1), None)
    print(f"{'N':>2} {'iters':>5} {'ok':>3} {'match':>5} {'wall s':>7} {'iter/h':>7} "
          f"{'xN=1':>5} {'steady/h':>8} {'gen s':>6} {'eval s':>6} {'impr s':>6} {'warm s':>6} "
          f"{'ready s':>7} {'pool':>4} {'wait med':>8} {'wait max':>8} {'loads':>5} "
          f"{'reloads':>7} {'ray s':>6} {'tok/reply':>9} {'LLM iter/h':>10}")
    for r in runs:
        t, w = r["timings_median"], r["wait"]
        ratio = r["per_hour"] / base if base and r["per_hour"] else None
        match = sum(row["match"] for row in r["rows"])
        print(f"{r['n']:>2} {r['iterations']:>5} {r['ok']:>3} {match:>5} "
              f"{r['wall_seconds']:>7.1f} {fmt(r['per_hour'], 7, '.0f')} {fmt(ratio, 5, '.2f')} "
              f"{fmt(r['steady_per_hour'], 8, '.0f')} {fmt(t['generate'], 6, '.2f')} "
              f"{fmt(t['evaluate'], 6, '.2f')} {fmt(t['improve'], 6, '.2f')} "
              f"{fmt(t['warmup'], 6, '.2f')} {fmt(t['ready_wait'], 7, '.2f')} "
              f"{fmt(t['pool'], 4, '.0f')} {fmt(w['median'], 8, '.2f')} {fmt(w['max'], 8, '.2f')} "
              f"{sum(r['loads'].values()):>5} {r['reloads']:>7} {fmt(t['ray_overhead'], 6, '.3f')} "
              f"{fmt(r['tokens_per_reply'], 9, '.0f')} {fmt(r['llm_bound_per_hour'], 10, '.0f')}")
    print("  iter/h: iterations over the CLI's wall time (start-up included); xN=1: its ratio "
          "to N=1; steady/h: from the first finished iteration to the last. gen/eval/impr: "
          "median seconds per iteration; warm: the runners' warm-up (median); ready: how "
          "long an evaluation waited for its warm sandbox (median); pool: the warm pool's "
          "depth (median). wait: an ok iteration's evaluate seconds minus its "
          "train and predict seconds (median, max). loads/reloads: model loads the scripted "
          "server counted like Ollama's scheduler (a reload: same model, other runner options). "
          "ray s: median seconds Ray adds to an evaluation (--executor ray). tok/reply: "
          "generated tokens per generator reply as the scripted server paces them (4 characters "
          "a token). LLM iter/h (--latency 7b): iterations/hour were the LLM the only cost: the "
          "mean prompt tokens of an iteration's calls and its replies' tokens under the "
          "token-rate model at N streams.")


def print_statuses(runs: list[dict], cycle: list[Entry], iterations: int) -> None:
    expected = [expected_entry(cycle, i) for i in range(1, iterations + 1)]
    width = 1 + max(7, *(len(e.name) for e in expected),
                    *(len(cell(row)) for r in runs for row in r["rows"]))
    head = "".join(f"{i:<{width}}" for i in range(1, iterations + 1))
    print(f"{'N':>2} {'chain':>5} | {head}".rstrip())
    for r in runs:
        for chain in range(r["n"]):
            cells = [cell(row) for row in r["rows"] if row["chain"] == chain]
            print((f"{r['n']:>2} {chain:>5} | " + "".join(f"{c:<{width}}" for c in cells))
                  .rstrip())
    print((f"{'expected':>8} | " + "".join(f"{SHORT.get(e.expected, e.expected):<{width}}"
                                           for e in expected)).rstrip())
    print((f"{'reply':>8} | " + "".join(f"{e.name:<{width}}" for e in expected)).rstrip())
    print("  '!' marks a status that differs from its expectation; '-' a missing iteration.")


def cell(row: dict) -> str:
    text = SHORT.get(row["status"], row["status"])
    return text if row["match"] else f"{text}!"


# ---------------------------------------------------------------------------------- main


def prepare_data(args: argparse.Namespace, cfg: SimpleNamespace) -> datasets.PreparedDataset:
    """Fashion-MNIST in the cache, and the CLI's subset made now (not inside the first run)."""
    args.data_dir = args.data_dir.expanduser().resolve()
    prepared = datasets.prepare(DATASET, args.data_dir, args.source, progress=False)
    return datasets.subset(prepared, cfg.train, cfg.test, args.seed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    cfg = resolve_settings(args, args.device == "auto" and cuda_available())
    for net in cfg.nets:
        reference_nets.source(net)  # unknown names fail now, not after minutes
    data = prepare_data(args, cfg)
    spec = data.spec
    cycle = build_cycle(cfg.nets, spec.input_shape[0], spec.num_classes, args.edit_format)
    temp = args.results_dir is None
    results = Path(tempfile.mkdtemp(prefix="search-throughput-")) if temp \
        else args.results_dir.expanduser().resolve()
    results.mkdir(parents=True, exist_ok=True)
    print(f"search_throughput: device={args.device} ({'cuda' if cfg.cuda else 'cpu'}) "
          f"executor={args.executor} sandbox={args.sandbox} data={data.name} "
          f"{data.train_count}/{data.test_count} "
          f"parallel={cfg.parallel} iterations/chain={cfg.iterations} "
          f"edit format={args.edit_format} {llm_text(cfg)}")
    print(f"  reply cycle: {' '.join(f'{e.name}={e.expected}' for e in cycle)}", flush=True)
    runs = []
    for n in cfg.parallel:
        runs.append(run_one(n, cfg, args, cycle, results))
        r = runs[-1]
        print(f"  . N={n}: {r['iterations']} iterations in {r['wall_seconds']:.1f} s "
              f"({fmt(r['per_hour'], 0, '.0f')}/h), exit {r['returncode']}, "
              f"{len(r['mismatches'])} mismatches, {r['reloads']} reloads", flush=True)
    print()
    print("Statuses per iteration")
    print_statuses(runs, cycle, cfg.iterations)
    print()
    print(f"Throughput: orchestrator run, {cfg.iterations} iterations per chain")
    print_summary(runs)
    problems = failures(runs, args.max_reloads)
    report(runs, problems, results, temp)
    total = time.perf_counter() - started
    print(f"\nbenchmark wall time {total:.0f} s")
    if args.json:
        write_json(args.json, cfg, args, data, cycle, runs, problems, total)
    return 1 if problems else 0


def llm_text(cfg: SimpleNamespace) -> str:
    """The scripted LLM's pace, in words."""
    if cfg.throughput is None:
        return f"latency gen {cfg.gen_latency:g} s, diag {cfg.diag_latency:g} s"
    t = cfg.throughput
    return (f"LLM on one shared GPU: {t.stream:g} tokens/s a stream, {t.aggregate:g} in all, "
            f"{t.prompt:g} prompt tokens/s, OLLAMA_NUM_PARALLEL = N")


def report(runs: list[dict], problems: list[str], results: Path, temp: bool) -> None:
    """The verdict; logs of failed runs; the temporary results are kept only on failure."""
    for r in runs:
        if r["log_tail"]:
            log = results / f"parallel-{r['n']}.log"
            print(f"\n--- N={r['n']}: last lines of {log}\n{r['log_tail']}")
    if problems:
        print(f"\nFAIL: {len(problems)} problem(s); the runs are in {results}")
        for line in problems:
            print(f"  {line}")
    else:
        print("\nPASS: every iteration's status matched its expectation (every valid net ok)")
        if temp:
            shutil.rmtree(results, ignore_errors=True)


def write_json(path: Path, cfg: SimpleNamespace, args: argparse.Namespace,
               data: datasets.PreparedDataset, cycle: list[Entry], runs: list[dict],
               problems: list[str], total: float) -> None:
    settings = {**vars(cfg), "device": args.device, "sandbox": args.sandbox,
                "dataset": data.name, "train": data.train_count, "test": data.test_count,
                "timeout": args.timeout, "memory": args.memory, "seed": args.seed,
                "cycle": [{"name": e.name, "expected": e.expected} for e in cycle]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "runs": runs, "passed": not problems,
                                "failures": problems, "wall_seconds": total},
                               indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
