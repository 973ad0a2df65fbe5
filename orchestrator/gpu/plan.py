"""The GPU plan: what the Ollama server holds on the candidates' GPU, and what each candidate
may use of the rest.

    budget = (free after every role model is loaded - headroom - warm sandboxes
              - one CUDA context per chain) / chains

"Free after" is NVML's reading once Ollama has loaded each role's model with the run's
options, so it leaves out whatever else holds the GPU (Ollama, a desktop, another process).
The budget is each candidate's allocator limit, its data on the GPU included (its CUDA context
is counted apart). A plan does not work, and the run is refused, when a budget is below the
floor, when Ollama could not keep a role's model wholly in GPU memory (`size_vram < size`: it
put layers on the CPU, and generation gets many times slower), or when loading one role's
model unloaded the other's (they would swap on every call).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from orchestrator.gpu.memory import GpuMemory

MIB, GIB = 1 << 20, 1 << 30
HEADROOM_SHARE = 0.03  # of the GPU's memory kept free: allocator fragmentation, driver, drift
HEADROOM_MIN = GIB
CUDA_CONTEXT_BYTES = 512 * MIB  # a CUDA context's own memory, outside torch's allocator
WARM_GPU_SHARE = 0.10  # at most this much of the GPU for the warm sandboxes of all chains
# Without a plan (no NVML), what --parallel chains' candidates divide between them.
CANDIDATES_GPU_SHARE = 0.95 - WARM_GPU_SHARE
WARM_PER_CHAIN = 2  # warm sandboxes reserved per chain when the pool is sized automatically
F16_BYTES = 2  # Ollama's KV cache is f16 unless OLLAMA_KV_CACHE_TYPE says otherwise
COMPUTE_BUFFERS_GUESS = GIB  # per model: llama.cpp's compute buffers, when choosing num_ctx
NUM_CTX_STEP = 1024
LEVERS = ("one model for both roles, a smaller num_ctx, OLLAMA_NUM_PARALLEL equal to "
          "--parallel, KV-cache quantisation (OLLAMA_KV_CACHE_TYPE=q8_0 with "
          "OLLAMA_FLASH_ATTENTION=1), min-gpu-budget, or --gpus pointing at another GPU")


def size_text(n: int | float) -> str:
    """Bytes as GiB, or MiB below one GiB."""
    return f"{n / GIB:.1f} GiB" if abs(n) >= GIB else f"{n / MIB:.0f} MiB"


def kv_bytes_per_token(model_info: Mapping) -> int | None:
    """Bytes of f16 KV cache one token of context costs the model: 2 (K and V) x layers x KV
    heads x head dimension x 2 bytes, from /api/show's `model_info` (GGUF metadata); None when
    it does not say. A per-layer list of KV head counts (models that mix attention kinds) is
    summed."""
    arch = model_info.get("general.architecture")

    def number(key: str) -> int | None:
        value = model_info.get(f"{arch}.{key}")
        return value if isinstance(value, int) and value > 0 else None

    layers, heads = number("block_count"), number("attention.head_count")
    kv_heads = model_info.get(f"{arch}.attention.head_count_kv", heads)
    if isinstance(kv_heads, list):
        per_layer = sum(h for h in kv_heads if isinstance(h, int) and h > 0)
    elif isinstance(kv_heads, int) and kv_heads > 0 and layers:
        per_layer = kv_heads * layers
    else:
        return None
    width = number("embedding_length")
    head_dim = width // heads if width and heads else None
    key, value = number("attention.key_length") or head_dim, \
        number("attention.value_length") or head_dim
    if not (key and value):
        return None
    return per_layer * (key + value) * F16_BYTES


@dataclass(frozen=True)
class ModelShape:
    """What choosing num_ctx needs to know of a role's model."""

    model: str
    weights: int  # bytes of the model file: its weights on the GPU
    kv_per_token: int | None  # bytes (f16); None: /api/show does not say


@dataclass(frozen=True)
class Holding:
    """One model the Ollama server holds, as /api/ps says it (bytes)."""

    model: str
    size: int
    size_vram: int
    context_length: int | None = None
    kv_per_token: int | None = None
    host: str = ""  # the server, where the run has several

    @property
    def spilled(self) -> bool:
        """Partly on the CPU: Ollama could not fit it in GPU memory. (All of it on the CPU,
        size_vram 0, is a server without a GPU, not a spill.)"""
        return 0 < self.size_vram < self.size

    def to_dict(self) -> dict:
        return {"model": self.model, "size": self.size, "size_vram": self.size_vram,
                "context_length": self.context_length, "kv_per_token": self.kv_per_token,
                "host": self.host}

    def describe(self) -> str:
        where = ("all on the GPU" if self.size_vram >= self.size else
                 "all on the CPU" if not self.size_vram else
                 f"only {size_text(self.size_vram)} of it on the GPU")
        ctx = f", num_ctx {self.context_length}" if self.context_length else ""
        kv = f", KV cache {self.kv_per_token / 1024:.0f} KiB a token at f16" \
            if self.kv_per_token else ""
        at = f" at {self.host}" if self.host else ""
        return f"{self.model}{at} {size_text(self.size)} ({where}{ctx}{kv})"


def headroom(total: int) -> int:
    return max(HEADROOM_MIN, int(HEADROOM_SHARE * total))


def warm_reservation(total: int, chains: int, warm_pool: int | None, footprint: int) -> int:
    """GPU memory set aside for the warm sandboxes of all chains, `footprint` each: `warm_pool`
    per chain as asked; sized automatically, WARM_PER_CHAIN per chain and at most
    WARM_GPU_SHARE of the GPU (the pools keep within it)."""
    if warm_pool is not None:
        return chains * warm_pool * footprint
    return min(int(WARM_GPU_SHARE * total), chains * WARM_PER_CHAIN * footprint)


def sandbox_footprint(data_bytes: int) -> int:
    """What one warm sandbox holds on the GPU before its candidate runs: the data (images as
    uint8, training labels as int64) and its CUDA context."""
    return data_bytes + CUDA_CONTEXT_BYTES


@dataclass
class Plan:
    """The candidates' GPU shared with the Ollama server (see the module docstring)."""

    gpu: GpuMemory | None  # the candidates' GPU, read before the models were loaded
    free_after: int  # its free memory once every role model was loaded
    holdings: list[Holding]  # every model the server(s) on this machine hold, ours or not
    roles: list[str]  # the role models (full names)
    chains: int
    warm: int  # reserved for warm sandboxes
    floor: int  # the least budget a candidate may have (min-gpu-budget)
    loaded: list[Holding] = field(default_factory=list)  # each role model right after its load,
    # on every server
    missing: list[Holding] = field(default_factory=list)  # of those, the ones a later load
    # unloaded again
    gpus: list[GpuMemory] = field(default_factory=list)  # every GPU NVML saw, before loading

    @property
    def headroom(self) -> int:
        return headroom(self.gpu.total) if self.gpu else 0

    @property
    def budget(self) -> int | None:
        """Each candidate's allocator limit in bytes; None when they train on the CPU."""
        if self.gpu is None:
            return None
        spare = self.free_after - self.headroom - self.warm - self.chains * CUDA_CONTEXT_BYTES
        return max(0, spare // self.chains)

    @property
    def held_vram(self) -> int:
        """What the server(s) hold in GPU memory, every model counted."""
        return sum(h.size_vram for h in self.holdings)

    def problems(self) -> list[str]:
        """Why the plan cannot work; empty when it can."""
        spilled = {(h.host, h.model): h for h in [*self.loaded, *self.holdings]
                   if h.model in self.roles and h.spilled}
        found = [f"Ollama could keep only {size_text(h.size_vram)} of {h.model}'s "
                 f"{size_text(h.size)} in GPU memory (the rest runs on the CPU, many times "
                 "slower)" for h in spilled.values()]
        found += [f"loading the other role's model unloaded {h.model}"
                  f"{f' at {h.host}' if h.host else ''} (the two do not fit together, and would "
                  "swap on every call)" for h in self.missing]
        budget = self.budget
        if budget is not None and budget < self.floor:
            found.append(f"each of {self.chains} candidate(s) would get {size_text(budget)} of "
                         f"GPU memory, less than min-gpu-budget {size_text(self.floor)}")
        return found

    def refusal(self) -> str | None:
        """The one line a refused plan exits with, or None when the plan works."""
        found = self.problems()
        if not found:
            return None
        return f"the GPU plan cannot work: {'; '.join(found)}. Levers: {LEVERS}"

    def after_growth(self, grown: int, holdings: list[Holding]) -> Plan:
        """The plan once the server holds `grown` bytes more GPU memory than planned."""
        return replace(self, free_after=self.free_after - grown, holdings=holdings)

    def lines(self) -> list[str]:
        """The plan in a few lines, as the run states it at start."""
        if self.gpu is None:
            head = ["GPU plan: the candidates use no GPU of this machine"]
        else:
            gpu = self.gpu
            head = [f"GPU plan: GPU {gpu.index} ({gpu.name}), {size_text(gpu.total)}, "
                    f"{size_text(gpu.free)} free before the models were loaded"]
        held = [f"  Ollama holds {h.describe()}" for h in self.holdings] or [
            "  Ollama holds nothing on this machine's GPUs"]
        gone = [f"  Ollama unloaded {h.describe()} to load the other role's model"
                for h in self.missing]
        if self.gpu is None:
            return head + held + gone
        contexts = self.chains * CUDA_CONTEXT_BYTES
        return head + held + gone + [
            f"  left for the candidates: {size_text(self.free_after)}, less "
            f"{size_text(self.headroom)} headroom, {size_text(self.warm)} for warm sandboxes, "
            f"{size_text(contexts)} for {self.chains} CUDA context(s)",
            f"  budget: {size_text(self.budget or 0)} per candidate, {self.chains} at once "
            f"(min-gpu-budget {size_text(self.floor)})"]

    def to_dict(self) -> dict:
        return {"gpu": self.gpu.to_dict() if self.gpu else None, "free_after": self.free_after,
                "gpus": [g.to_dict() for g in self.gpus],
                "holdings": [h.to_dict() for h in self.holdings], "roles": self.roles,
                "loaded": [h.to_dict() for h in self.loaded],
                "missing": [h.to_dict() for h in self.missing],
                "chains": self.chains, "warm": self.warm, "headroom": self.headroom,
                "floor": self.floor, "budget": self.budget}


def fitted_num_ctx(needs: Mapping[str, tuple[int, int]], shapes: Mapping[str, ModelShape],
                   room: int, slots: int) -> dict[str, int]:
    """Each model's num_ctx: what its prompts can need (`needs[model] = (least, most)`), lowered
    together in steps of NUM_CTX_STEP, never below `least`, until the models' predicted holding
    (weights, f16 KV cache of num_ctx x `slots` tokens, compute buffers) fits in `room` bytes.
    Where even `least` does not fit, `least`: the plan measured after loading decides."""
    def predicted(cap: int) -> int:
        return sum(shape.weights + COMPUTE_BUFFERS_GUESS
                   + (shape.kv_per_token or 0) * sized(model, cap) * slots
                   for model, shape in shapes.items())

    def sized(model: str, cap: int) -> int:
        least, most = needs[model]
        return max(least, min(most, cap))

    cap = max(most for _, most in needs.values())
    while predicted(cap) > room and cap > NUM_CTX_STEP and any(
            sized(m, cap) > needs[m][0] for m in needs):
        cap = math.ceil(cap / NUM_CTX_STEP) * NUM_CTX_STEP - NUM_CTX_STEP
    return {model: sized(model, cap) for model in needs}
