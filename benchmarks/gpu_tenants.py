"""One GPU, two tenants, on a real GPU: the LLM server's memory held, and a search beside it.

    python benchmarks/gpu_tenants.py [--parallel 4] [--iterations 6] [--json PATH]

A machine with a CUDA GPU and torch, no Docker and no Ollama needed. The scripted Ollama server
(tests/fake_ollama.py, qwen2.5-coder:7b's metadata, OLLAMA_NUM_PARALLEL = --parallel) puts
what its loaded models hold into a process that holds that much GPU memory as torch tensors
(its own CUDA context on top, as Ollama's runner has one). Then the product runs:
`orchestrator run --sandbox local --parallel N --device cuda` on full Fashion-MNIST, answered
from search_throughput's cycle of reference nets and broken candidates, plus a candidate that
asks for far more than any budget. It reports the GPU plan, every iteration's status, each
candidate's peak GPU memory against its budget, and checks: every valid net `ok`, the greedy
one `cuda_oom`, no other `cuda_oom` and no `CrowdedOut`, every peak at or under its budget,
and the held memory untouched. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks import search_throughput as st  # noqa: E402
from orchestrator import outcomes as fc  # noqa: E402
from orchestrator.gpu.memory import gpu_memory  # noqa: E402
from orchestrator.store.journal import Journal  # noqa: E402
from tests import replies  # noqa: E402
from tests.fake_ollama import QWEN25_CODER_7B, FakeOllama  # noqa: E402

GIB = 1 << 30
HOLDER = r"""
import sys, torch
held = {}
print("ready", flush=True)
for line in sys.stdin:
    op, owner, *size = line.split()
    if op == "hold":
        held[owner] = torch.empty(int(size[0]), dtype=torch.uint8, device="cuda:0")
        held[owner].fill_(1)
    elif op == "release":
        held.pop(owner, None)
        torch.cuda.empty_cache()
    torch.cuda.synchronize()
    print("ok", sum(t.numel() for t in held.values()), flush=True)
"""
GREEDY = '''
import torch
from torch import nn


class Net(nn.Module):
    """Asks for 1 TiB of GPU memory: past any budget, the design's own fault."""

    def __init__(self):
        super().__init__()
        self.hog = torch.empty(1 << 40, dtype=torch.uint8, device="cuda")
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
'''


class TensorHolder:
    """GPU 0's memory held by a separate process, as an Ollama runner holds its model's."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready", "the holder did not start"
        self.held: dict[str, int] = {}
        self._lock = threading.Lock()

    def _send(self, line: str) -> int:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if not answer or answer[0] != "ok":
            raise RuntimeError(f"the holder failed on {line!r}")
        return int(answer[1])

    def hold(self, owner: str, nbytes: int) -> None:
        with self._lock:
            self._send(f"hold {owner} {nbytes}")
            self.held[owner] = nbytes

    def release(self, owner: str) -> None:
        with self._lock:
            self._send(f"release {owner}")
            self.held.pop(owner, None)

    def free(self) -> int:
        return next(g.free for g in gpu_memory() if g.index == 0)

    def total(self) -> int:
        """What the process holds now, in bytes."""
        with self._lock:
            return self._send("check -")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parallel", type=int, default=4, help="chains (and server slots)")
    p.add_argument("--iterations", type=int, default=8, help="iterations per chain")
    p.add_argument("--nets", default=",".join(st.reference_nets.NAMES),
                   help="valid reference nets in the cycle")
    p.add_argument("--data-dir", type=Path, default=st.DEFAULT_DATA_DIR)
    p.add_argument("--from", dest="source", type=Path, default=st.FASHION_SOURCE)
    p.add_argument("--results-dir", type=Path, help="default: a temporary folder")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", type=Path, help="write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not gpu_memory():
        print("gpu_tenants: no GPU (NVML sees none); this benchmark needs one")
        return 2
    cfg = SimpleNamespace(train=None, test=None)
    data = st.prepare_data(args, cfg)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    cycle = st.build_cycle(nets, *data.spec.input_shape[:1], data.spec.num_classes)
    cycle.append(st.Entry("greedy", replies.prose_wrapped(GREEDY), fc.CUDA_OOM))
    results = args.results_dir or Path(tempfile.mkdtemp(prefix="gpu-tenants-"))
    results.mkdir(parents=True, exist_ok=True)
    holder = TensorHolder()
    before = gpu_memory()[0]
    responder = st.Responder(cycle, args.seed)
    try:
        with FakeOllama(models=[st.MODEL], specs={st.MODEL: QWEN25_CODER_7B},
                        num_parallel=args.parallel, gpu=holder, default=responder) as server:
            cmd = [sys.executable, "-m", "orchestrator", "run", "--dataset", st.DATASET,
                   "--iterations", str(args.iterations), "--parallel", str(args.parallel),
                   "--sandbox", "local", "--device", "cuda", "--generator-model", st.MODEL,
                   "--improver-model", st.MODEL, "--no-pull", "--ollama-host", server.url,
                   "--data-dir", str(args.data_dir), "--results-dir", str(results),
                   "--name", "gpu-tenants", "--timeout", f"{args.timeout:g}",
                   "--seed", str(args.seed)]
            print(f"$ {shlex.join(cmd)}", flush=True)
            started = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                                  timeout=args.iterations * (args.timeout + 120) + 600)
            wall = time.perf_counter() - started
            held = dict(holder.held)
            intact = holder.total() == sum(held.values())
    finally:
        holder.close()
    print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
    run_dir = results / "gpu-tenants"
    records = Journal(run_dir).records() if (run_dir / "iterations.jsonl").exists() else []
    plan = json.loads((run_dir / "config.json").read_text())["gpu_plan"] if records else {}
    problems = checks(proc.returncode, records, run_dir, cycle, args, intact)
    print(f"\nGPU 0: {before.name}, {before.total / GIB:.1f} GiB; the server held "
          f"{sum(held.values()) / GIB:.2f} GiB ({held}); wall {wall:.0f} s")
    print(f"plan: budget {plan.get('budget', 0) / GIB:.2f} GiB per candidate, "
          f"{plan.get('chains')} chains, warm {plan.get('warm', 0) / GIB:.2f} GiB")
    print(f"{'chain':>5} {'it':>3} {'net':<15} {'status':<14} {'peak GiB':>8} {'budget GiB':>10}")
    for r in sorted(records, key=lambda r: (r.get("chain", 0), r["iteration"])):
        m = r.get("metrics") or {}
        name = st.expected_entry(cycle, r["iteration"]).name
        print(f"{r.get('chain', 0):>5} {r['iteration']:>3} {name:<15} {r['status']:<14} "
              f"{m.get('gpu_peak_bytes', 0) / GIB:>8.2f} "
              f"{m.get('gpu_budget_bytes', 0) / GIB:>10.2f}")
    print("\n" + ("PASS" if not problems else "FAIL:\n  " + "\n  ".join(problems)))
    if args.json:
        args.json.write_text(json.dumps({"plan": plan, "held": held, "wall_seconds": wall,
                                         "records": records, "problems": problems},
                                        indent=2, default=str))
    return 1 if problems else 0


def checks(returncode: int, records: list[dict], run_dir: Path, cycle: list, args,
           intact: bool) -> list[str]:
    """What must hold: the run finished, every status as expected, peaks within budgets."""
    problems = [] if returncode == 0 else [f"orchestrator run exited {returncode}"]
    rows = st.check_records(records, run_dir, cycle, args.parallel, args.iterations)
    problems += st.mismatches(rows)
    for r in records:
        m, where = r.get("metrics") or {}, f"chain {r.get('chain', 0)} it {r['iteration']}"
        if (r.get("error") or {}).get("type") == fc.CROWDED_OUT:
            problems.append(f"{where}: crowded out of its budget")
        peak, budget = m.get("gpu_peak_bytes"), m.get("gpu_budget_bytes")
        if r["status"] == fc.OK and not (peak and budget and peak <= budget):
            problems.append(f"{where}: peak {peak} over its budget {budget}")
    if not intact:
        problems.append("the server's held memory changed under the candidates")
    return problems


if __name__ == "__main__":
    sys.exit(main())
