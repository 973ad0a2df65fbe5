"""One GPU, two tenants: the plan of the GPU the Ollama server and the candidates share.

There is no GPU here, so the GPU's memory figures are the one stand-in: NVML answers from a
simulated GPU (tests/fake_gpu.py, tests/stand_ins/pynvml.py) into which the scripted Ollama
server puts what its loaded models hold. Everything else is real: the Ollama API over HTTP,
the CLI, the runner, the journal."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from orchestrator.config import RunConfig
from orchestrator.gpu.memory import GpuMemory, candidates_gpu, gpu_memory
from orchestrator.gpu.plan import (
    CUDA_CONTEXT_BYTES,
    GIB,
    MIB,
    ModelShape,
    fitted_num_ctx,
    kv_bytes_per_token,
)
from orchestrator.gpu.residency import Demand, Tenancy, duration_seconds, keep_alive_for
from orchestrator.llm.client import GenerationOptions, OllamaClient
from orchestrator.search.prompts import (
    OUTCOME_CHARS,
    PromptBook,
    Task,
    context_needs,
    diagnosis_chars,
)
from tests import replies
from tests.fake_gpu import STAND_INS, SimulatedGPU
from tests.fake_ollama import DEEPSEEK_CODER_67B, QWEN25_7B, FakeOllama, Reply
from tests.helpers import flat
from tests.test_search_e2e import DIAGNOSIS as DIAGNOSES
from tests.test_search_e2e import by_role, orchestrator, read_records, run_args

QWEN_CODER, DEEPSEEK, QWEN = "qwen2.5-coder:7b", "deepseek-coder:6.7b", "qwen2.5:7b"
CIFAR = Task("cifar10", (3, 32, 32), 10, {"epochs": 1, "lr": 0.01, "momentum": 0.9,
                                         "weight_decay": 5e-4, "batch_size": 128})
# One warm sandbox's data on the GPU for CIFAR-10: 60,000 images of 3x32x32 bytes, and 50,000
# training labels as int64.
CIFAR_DATA = 60_000 * 3 * 32 * 32 + 8 * 50_000
DESKTOP = GIB // 2  # what else holds the workstation's GPU (a display, a browser)


# -- reading the model and the GPU -----------------------------------------------------------
def test_kv_cost_per_token_comes_from_the_models_metadata() -> None:
    def info(arch: str, **keys: object) -> dict:
        return {"general.architecture": arch, **{f"{arch}.{k}": v for k, v in keys.items()}}

    qwen = info("qwen2", block_count=28, embedding_length=3584,
                **{"attention.head_count": 28, "attention.head_count_kv": 4})
    deepseek = info("llama", block_count=32, embedding_length=4096,
                    **{"attention.head_count": 32, "attention.head_count_kv": 32})
    gemma = info("gemma3", block_count=4, embedding_length=640,
                 **{"attention.head_count": 4, "attention.head_count_kv": 1,
                    "attention.key_length": 256, "attention.value_length": 256})
    mixed = info("mix", block_count=3, embedding_length=512,
                 **{"attention.head_count": 8, "attention.head_count_kv": [2, 0, 2]})
    assert kv_bytes_per_token(qwen) == 2 * 28 * 4 * 128 * 2 == 57_344
    assert kv_bytes_per_token(deepseek) == 2 * 32 * 32 * 128 * 2 == 524_288  # no GQA: 0.5 MiB
    assert kv_bytes_per_token(gemma) == 4 * 1 * (256 + 256) * 2
    assert kv_bytes_per_token(mixed) == (2 + 2) * (64 + 64) * 2
    assert kv_bytes_per_token(info("llama", block_count=32)) is None  # no heads stated
    assert kv_bytes_per_token({}) is None


def test_nvml_is_read_on_the_host_and_absent_nvml_means_no_gpu(tmp_path, monkeypatch) -> None:
    gpu = SimulatedGPU(tmp_path / "gpus.json", [24 * GIB, 80 * GIB],
                       ["NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3"])
    gpu.hold("desktop", DESKTOP)
    monkeypatch.setenv("ORCHESTRATOR_TEST_GPUS", str(gpu.path))
    spec = importlib.util.spec_from_file_location("pynvml", STAND_INS / "pynvml.py")
    stand_in = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stand_in)
    monkeypatch.setitem(sys.modules, "pynvml", stand_in)  # as PYTHONPATH does in a process
    assert gpu_memory() == [GpuMemory(0, "NVIDIA GeForce RTX 4090", 24 * GIB, 24 * GIB - DESKTOP),
                            GpuMemory(1, "NVIDIA H100 80GB HBM3", 80 * GIB, 80 * GIB)]
    monkeypatch.delenv("ORCHESTRATOR_TEST_GPUS")  # the library answers, the driver does not
    assert gpu_memory() == []


def test_the_candidates_gpu_is_the_first_they_see(monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert candidates_gpu("docker", "auto", "auto") == 0
    assert candidates_gpu("docker", "2,3", "auto") == 2
    assert candidates_gpu("docker", "none", "auto") is None
    assert candidates_gpu("local", "auto", "cpu") is None
    assert candidates_gpu("local", "auto", "auto") == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert candidates_gpu("local", "auto", "cuda") == 1
    assert candidates_gpu("docker", "auto", "cuda") == 0  # a container has no such variable
    assert candidates_gpu("local", "3", "auto") == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert candidates_gpu("local", "auto", "auto") is None


def test_keep_alive_outlasts_the_longest_gap_between_calls() -> None:
    assert duration_seconds("1h30m") == 5400 and duration_seconds("-1m") < 0
    assert keep_alive_for("30m", 5400) == "5400s"
    assert keep_alive_for("2h", 5400) == "2h"
    assert keep_alive_for("-1m", 5400) == "-1m"  # forever already
    assert keep_alive_for("0", 61.2) == "62s"


# -- the scripted server holds memory as Ollama does -----------------------------------------
def test_the_scripted_server_places_models_as_ollamas_scheduler(tmp_path) -> None:
    gpu = SimulatedGPU(tmp_path / "gpus.json", [24 * GIB])
    specs = {DEEPSEEK: DEEPSEEK_CODER_67B, QWEN: QWEN25_7B}
    with FakeOllama(models=[DEEPSEEK, QWEN], specs=specs, num_parallel=4, gpu=gpu,
                    default=None) as server:
        client = OllamaClient(server.url, GenerationOptions(keep_alive="90m"))
        client.models.load(DEEPSEEK, 16384)  # alone: what fits goes on the GPU, the rest on CPU
        (first,) = client.models.running()
        held = DEEPSEEK_CODER_67B.file_size + 524_288 * 16384 * 4 + 400 * MIB
        assert (first.model, first.size, first.size_vram, first.context_length) == (
            DEEPSEEK + "", held, 24 * GIB, 16384)
        assert gpu.free() == 0
        client.models.load(QWEN, 8192)  # beside another model it must fit wholly: that one goes
        (second,) = client.models.running()
        assert second.model == QWEN and second.size == second.size_vram
        assert gpu.free() == 24 * GIB - second.size
        client.models.unload(QWEN)  # no messages and keep_alive 0
        assert client.models.running() == [] and gpu.free() == 24 * GIB
        bodies = server.chat_requests(loads=True)
        assert server.chat_requests() == []  # nothing generated
        assert [b["keep_alive"] for b in bodies] == ["90m", "90m", 0]
        ps = [path for path in server.paths() if path == "/api/ps"]
        assert ps  # /api/ps, as `ollama ps` reads it


def test_ps_and_show_answer_with_ollamas_field_names(fake_ollama) -> None:
    import httpx

    server = fake_ollama(models=[DEEPSEEK], specs={DEEPSEEK: DEEPSEEK_CODER_67B})
    httpx.post(f"{server.url}/api/chat", json={"model": DEEPSEEK, "messages": [],
                                               "options": {"num_ctx": 4096}}).raise_for_status()
    (entry,) = httpx.get(f"{server.url}/api/ps").json()["models"]
    # api/types.go ProcessModelResponse
    assert set(entry) == {"name", "model", "size", "digest", "details", "expires_at",
                          "size_vram", "context_length"}
    info = httpx.post(f"{server.url}/api/show", json={"model": DEEPSEEK}).json()["model_info"]
    assert info["general.architecture"] == "llama" and info["llama.block_count"] == 32
    assert info["llama.attention.head_count_kv"] == 32 and info["llama.context_length"] == 16384


# -- the three plans -------------------------------------------------------------------------
def settle(server: FakeOllama, gpu: SimulatedGPU, generator: str, improver: str,
           chains: int) -> tuple[dict[str, int], object]:
    """The start-up of a run, as the CLI does it: num_ctx sized from the prompts within the
    plan, the role models loaded, the plan made."""
    client = OllamaClient(server.url, GenerationOptions(keep_alive="5400s"))
    config = RunConfig(generator_model=generator, improver_model=improver, parallel=chains)
    needs = context_needs(PromptBook(), CIFAR, config, OUTCOME_CHARS, diagnosis_chars(2048, True))
    tenancy = Tenancy([client], [generator, improver],
                      Demand(0, chains, None, CIFAR_DATA, 2 * GIB), read=gpu.read)
    num_ctx = client.models.set_num_ctx(tenancy.fitted_num_ctx(needs))
    return num_ctx, tenancy.settle(num_ctx)


def warm_sandboxes(chains: int) -> int:
    """Two warm sandboxes per chain, each its data and a CUDA context."""
    return chains * 2 * (CIFAR_DATA + CUDA_CONTEXT_BYTES)


def test_a_24_gib_gpu_with_one_7b_model_in_both_roles(tmp_path) -> None:
    gpu = SimulatedGPU(tmp_path / "gpus.json", [24 * GIB])
    gpu.hold("desktop", DESKTOP)
    with FakeOllama(models=[QWEN_CODER], gpu=gpu, num_parallel=1) as server:
        num_ctx, plan = settle(server, gpu, QWEN_CODER, QWEN_CODER, chains=1)

    # The improver's longest prompt (two codes of 2,048 tokens, five triples) and its reply.
    assert num_ctx == {QWEN_CODER: 10240}
    ollama = 4_683_087_332 + 57_344 * 10240 * 1 + 400 * MIB  # weights, f16 KV, buffers
    free_after = 24 * GIB - DESKTOP - ollama
    headroom = GIB  # 3% of 24 GiB is less than the 1 GiB floor
    budget = free_after - headroom - warm_sandboxes(1) - CUDA_CONTEXT_BYTES
    assert [(h.model, h.size, h.size_vram) for h in plan.holdings] == [
        (QWEN_CODER, ollama, ollama)]
    assert plan.free_after == free_after and plan.headroom == headroom
    assert plan.warm == warm_sandboxes(1) == 1_443_181_824
    assert plan.budget == budget == 16_489_418_012  # 15.4 GiB for the one candidate
    assert plan.refusal() is None
    assert plan.lines()[-1] == "  budget: 15.4 GiB per candidate, 1 at once (min-gpu-budget " \
                               "2.0 GiB)"


def test_a_24_gib_gpu_with_deepseek_and_qwen_on_a_four_slot_server_is_refused(tmp_path) -> None:
    gpu = SimulatedGPU(tmp_path / "gpus.json", [24 * GIB])
    gpu.hold("desktop", DESKTOP)
    specs = {DEEPSEEK: DEEPSEEK_CODER_67B, QWEN: QWEN25_7B}
    with FakeOllama(models=[DEEPSEEK, QWEN], specs=specs, gpu=gpu, num_parallel=4) as server:
        num_ctx, plan = settle(server, gpu, DEEPSEEK, QWEN, chains=1)

    assert num_ctx == {DEEPSEEK: 8192, QWEN: 10240}
    deepseek = 3_827_834_503 + 524_288 * 8192 * 4 + 400 * MIB  # 16 GiB of it KV cache
    qwen = 4_683_087_332 + 57_344 * 10240 * 4 + 400 * MIB
    assert deepseek + qwen > 24 * GIB - DESKTOP  # together they do not fit
    assert [(h.model, h.size, h.size_vram) for h in plan.loaded] == [
        (DEEPSEEK, deepseek, deepseek), (QWEN, qwen, qwen)]
    assert [h.model for h in plan.holdings] == [QWEN]
    assert [h.model for h in plan.missing] == [DEEPSEEK]
    refusal = plan.refusal()
    assert refusal.startswith("the GPU plan cannot work: loading the other role's model "
                              "unloaded deepseek-coder:6.7b")
    assert "OLLAMA_NUM_PARALLEL equal to --parallel" in refusal

    # The lever: one slot per model, as --parallel 1 needs.
    gpu.release(QWEN)
    with FakeOllama(models=[DEEPSEEK, QWEN], specs=specs, gpu=gpu, num_parallel=1) as server:
        _, plan = settle(server, gpu, DEEPSEEK, QWEN, chains=1)
    deepseek = 3_827_834_503 + 524_288 * 8192 + 400 * MIB
    qwen = 4_683_087_332 + 57_344 * 10240 + 400 * MIB
    budget = 24 * GIB - DESKTOP - deepseek - qwen - GIB - warm_sandboxes(1) - CUDA_CONTEXT_BYTES
    assert plan.refusal() is None and plan.budget == budget == 7_947_185_813  # 7.4 GiB


def test_an_80_gib_gpu_with_four_chains(tmp_path) -> None:
    gpu = SimulatedGPU(tmp_path / "gpus.json", [80 * GIB], ["NVIDIA H100 80GB HBM3"])
    gpu.hold("desktop", DESKTOP)
    with FakeOllama(models=[QWEN_CODER], gpu=gpu, num_parallel=4) as server:
        num_ctx, plan = settle(server, gpu, QWEN_CODER, QWEN_CODER, chains=4)

    assert num_ctx == {QWEN_CODER: 10240}
    ollama = 4_683_087_332 + 57_344 * 10240 * 4 + 400 * MIB
    headroom = int(0.03 * 80 * GIB)
    warm = warm_sandboxes(4)  # less than a tenth of the GPU
    budget = (80 * GIB - DESKTOP - ollama - headroom - warm - 4 * CUDA_CONTEXT_BYTES) // 4
    assert plan.headroom == headroom and plan.warm == warm == 5_772_727_296
    assert plan.budget == budget == 16_853_488_928  # 15.7 GiB for each of four candidates
    assert plan.refusal() is None


def test_num_ctx_gives_way_where_the_kv_cache_would_crowd_the_candidates() -> None:
    needs = {DEEPSEEK: (5120, 8192), QWEN: (6144, 10240)}
    shapes = {DEEPSEEK: ModelShape(DEEPSEEK, 3_827_834_503, 524_288),
              QWEN: ModelShape(QWEN, 4_683_087_332, 57_344)}
    roomy = fitted_num_ctx(needs, shapes, room=40 * GIB, slots=2)
    assert roomy == {DEEPSEEK: 8192, QWEN: 10240}  # all the prompts can need
    # 17 GiB for the models: 8.5 GB of weights and 2 GiB of buffers leave 7.6 GB of KV cache
    # for two slots of each; deepseek's 0.5 MiB a token must come down to 6144 tokens.
    tight = fitted_num_ctx(needs, shapes, room=17 * GIB, slots=2)
    predicted = sum(s.weights + GIB + s.kv_per_token * tight[m] * 2 for m, s in shapes.items())
    assert tight == {DEEPSEEK: 6144, QWEN: 6144} and predicted <= 17 * GIB
    one_step_more = {DEEPSEEK: 7168, QWEN: 7168}
    assert sum(s.weights + GIB + s.kv_per_token * one_step_more[m] * 2
               for m, s in shapes.items()) > 17 * GIB
    # Never below what the drop rules cut prompts down to: the measured plan then decides.
    assert fitted_num_ctx(needs, shapes, room=GIB, slots=2) == {DEEPSEEK: 5120, QWEN: 6144}


def test_the_prompt_bound_counts_diagnoses_at_the_schemas_length() -> None:
    config = RunConfig(generator_model=QWEN_CODER, improver_model=QWEN_CODER)
    book = PromptBook()
    bounded = context_needs(book, CIFAR, config, OUTCOME_CHARS, diagnosis_chars(2048, True))
    json_mode = context_needs(book, CIFAR, config, OUTCOME_CHARS, diagnosis_chars(2048, False))
    assert diagnosis_chars(2048, True) == 2 * 512  # a triple's problem and suggestion
    assert bounded == {QWEN_CODER: (6144, 10240)}
    assert json_mode[QWEN_CODER][1] >= 5 * 2048 + bounded[QWEN_CODER][1] - 5 * 512  # unbounded


def test_json_dump_of_the_plan_is_what_config_json_keeps(tmp_path) -> None:
    gpu = SimulatedGPU(tmp_path / "gpus.json", [24 * GIB])
    with FakeOllama(models=[QWEN_CODER], gpu=gpu) as server:
        _, plan = settle(server, gpu, QWEN_CODER, QWEN_CODER, chains=2)
    stored = json.loads(json.dumps(plan.to_dict()))
    assert stored["budget"] == plan.budget and stored["gpu"]["total"] == 24 * GIB
    assert stored["gpus"] == [{"index": 0, "name": "NVIDIA GeForce RTX 4090",
                               "total": 24 * GIB, "free": 24 * GIB}]
    assert stored["holdings"][0]["kv_per_token"] == 57_344
    assert stored["chains"] == 2 and stored["floor"] == 2 * GIB


# -- through the CLI -------------------------------------------------------------------------
def cli_run(server: FakeOllama, gpu: SimulatedGPU, data_dir: Path, results: Path, name: str,
            iterations: int, *extra: str) -> tuple[int, str]:
    """`orchestrator run` on the simulated GPU: the candidates' device is `auto` (the runner
    finds no CUDA here and trains on the CPU within the budget it was given)."""
    args = run_args(server, data_dir, results, name, iterations)
    args[args.index("--device") + 1] = "auto"
    proc = orchestrator(*args, *extra, env=gpu.env())
    output, _ = proc.communicate(timeout=900)
    return proc.returncode, output


@pytest.mark.slow
def test_a_plan_that_cannot_work_is_refused_with_its_levers_and_nothing_journaled(
        fake_ollama, fashion_data_dir, tmp_path) -> None:
    gpu = SimulatedGPU(tmp_path / "gpus.json", [24 * GIB])
    gpu.hold("desktop", DESKTOP)
    server = fake_ollama(models=[DEEPSEEK, QWEN], specs={DEEPSEEK: DEEPSEEK_CODER_67B,
                                                         QWEN: QWEN25_7B},
                         gpu=gpu, num_parallel=4, default=None)
    code, output = cli_run(server, gpu, fashion_data_dir, tmp_path / "results", "refused", 2,
                           "--generator-model", DEEPSEEK, "--improver-model", QWEN)
    assert code == 2, output
    error = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith(
        "error: the GPU plan cannot work: loading the other role's model unloaded "
        "deepseek-coder:6.7b (the two do not fit together")
    assert ("Levers: one model for both roles, a smaller num_ctx, OLLAMA_NUM_PARALLEL equal to "
            "--parallel, KV-cache quantisation") in flat(output)
    assert "GPU plan: GPU 0 (NVIDIA GeForce RTX 4090), 24.0 GiB" in output
    assert not (tmp_path / "results" / "refused").exists()
    assert server.chat_requests() == []  # nothing generated
    assert server.running() == {} and gpu.free() == 24 * GIB - DESKTOP  # memory given back


@pytest.mark.slow
def test_every_candidate_gets_the_plans_budget_at_parallel_1(fake_ollama, fashion_data_dir,
                                                             tmp_path) -> None:
    gpu = SimulatedGPU(tmp_path / "gpus.json", [24 * GIB])
    server = fake_ollama(gpu=gpu, default=by_role([replies.VALID_NET] * 2, DIAGNOSES[:2]))
    code, output = cli_run(server, gpu, fashion_data_dir, tmp_path, "planned", 2)
    assert code == 0, output

    config = json.loads((tmp_path / "planned" / "config.json").read_text())
    plan = config["gpu_plan"]
    assert plan["chains"] == 1 and plan["budget"] > 2 * GIB
    assert {h["model"] for h in plan["holdings"]} == {"coder:test", "improver:test"}
    records = read_records(tmp_path / "planned")
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert [r["metrics"]["gpu_budget_bytes"] for r in records] == [plan["budget"]] * 2
    assert f"budget: {plan['budget'] / GIB:.1f} GiB per candidate, 1 at once" in output
    # Both models loaded with the run's num_ctx before the first generation, kept resident
    # past the longest gap of the run (2 x (300 s + 300 s to warm up) + 2 x 600 s), and given
    # the configured keep_alive back at the end.
    chats = server.chat_requests(loads=True)
    loads = [(b["model"], b["options"]["num_ctx"]) for b in chats[:2]]
    assert not chats[0]["messages"] and not chats[1]["messages"]
    assert loads == [(m, config["num_ctx_per_model"][m]) for m in ("coder:test", "improver:test")]
    assert {b["keep_alive"] for b in chats[:-2]} == {"2400s"} == {config["keep_alive_sent"]}
    assert [b["keep_alive"] for b in chats[-2:]] == ["30m", "30m"]
    assert server.reloads() == 0


@pytest.mark.slow
def test_a_model_that_spills_to_the_cpu_mid_run_stops_it_and_resume_continues(
        fake_ollama, fashion_data_dir, tmp_path) -> None:
    gpu = SimulatedGPU(tmp_path / "gpus.json", [24 * GIB])

    def reloaded_beside_a_full_gpu(body: dict) -> Reply:
        # Someone stops the generator's model (`ollama stop`), another job fills the GPU, and
        # a request with the run's own options loads the model again: Ollama can place only
        # part of it on the GPU. A load with the same options would not move it back.
        server.unload("coder:test")
        gpu.hold("another job", 22 * GIB)
        server.load("coder:test", body["options"])
        return Reply(content=replies.VALID_NET)

    nets = [replies.VALID_NET, reloaded_beside_a_full_gpu, *[replies.VALID_NET] * 3]
    server = fake_ollama(gpu=gpu, default=by_role(nets, DIAGNOSES))
    code, output = cli_run(server, gpu, fashion_data_dir, tmp_path, "spill", 4)
    assert code == 3, output
    assert "stopped: Ollama moved part of coder:test to the CPU (only" in flat(output)
    assert "--resume" in output
    assert [r["iteration"] for r in read_records(tmp_path / "spill")] == [1]

    gpu.release("another job")
    code, output = cli_run(server, gpu, fashion_data_dir, tmp_path, "spill", 4, "--resume")
    assert code == 0, output
    records = read_records(tmp_path / "spill")
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    assert all(r["status"] == "ok" for r in records)
    held = server.running()["coder:test"]
    assert held["size_vram"] == held["size"]  # loaded again, wholly on the GPU


@pytest.mark.slow
def test_a_holding_that_grows_mid_run_shrinks_the_budget(fake_ollama, fashion_data_dir,
                                                         tmp_path) -> None:
    gpu = SimulatedGPU(tmp_path / "gpus.json", [24 * GIB])

    def another_model_is_loaded(body: dict) -> Reply:
        server.load("other:7b", {"num_ctx": 8192})  # someone else's request, same server
        return Reply(content=replies.VALID_NET)

    nets = [replies.VALID_NET, another_model_is_loaded, replies.VALID_NET]
    server = fake_ollama(models=["coder:test", "improver:test", "other:7b"], gpu=gpu,
                         default=by_role(nets, DIAGNOSES))
    code, output = cli_run(server, gpu, fashion_data_dir, tmp_path, "grown", 3)
    assert code == 0, output
    other = server.running()["other:7b"]["size_vram"]
    budgets = [r["metrics"]["gpu_budget_bytes"] for r in read_records(tmp_path / "grown")]
    assert budgets[0] - budgets[1] == other == budgets[0] - budgets[2]
    assert f"Ollama holds {other / GIB:.1f} GiB more GPU memory than planned (" in flat(output)


CROWDABLE = '''
import os

import torch
from torch import nn

TRIES = {tries!r}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        with open(TRIES, "a") as f:
            f.write("x")
        if os.path.getsize(TRIES) <= {crowded}:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate {wanted}. GPU 0 has a total capacity of "
                "24.00 GiB of which 6.00 MiB is free.")
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
'''


@pytest.mark.slow
def test_a_candidate_crowded_out_of_its_budget_is_evaluated_again_once(
        fake_ollama, fashion_data_dir, tmp_path) -> None:
    """The GPU's figure here is the one the OOM message gives (no GPU to fill): 20 MiB asked
    within the budget is another tenant's doing, 30 GiB past it the candidate's."""
    gpu = SimulatedGPU(tmp_path / "gpus.json", [24 * GIB])
    tries = {name: tmp_path / f"{name}.tries" for name in ("once", "always", "greedy")}
    nets = [replies.prose_wrapped(CROWDABLE.format(tries=str(tries["once"]), crowded=1,
                                                   wanted="20.00 MiB")),
            replies.prose_wrapped(CROWDABLE.format(tries=str(tries["always"]), crowded=9,
                                                   wanted="20.00 MiB")),
            replies.prose_wrapped(CROWDABLE.format(tries=str(tries["greedy"]), crowded=9,
                                                   wanted="30.00 GiB"))]
    server = fake_ollama(gpu=gpu, default=by_role(nets, DIAGNOSES))
    # Two iterations: the second's first attempt, crowded out twice, is lost and tried again.
    code, output = cli_run(server, gpu, fashion_data_dir, tmp_path, "crowded", 2)
    assert code == 0, output
    once, always, greedy = read_records(tmp_path / "crowded")
    assert [r["iteration"] for r in (once, always, greedy)] == [1, 2, 2]
    assert once["status"] == "ok" and tries["once"].read_text() == "xx"
    assert once["metrics"]["crowded_retries"] == 1
    assert always["status"] == "sandbox_error" and tries["always"].read_text() == "xx"
    assert always["error"]["type"] == "CrowdedOut" and always["improver_error"] is None
    assert "crowded out: the GPU ran out of memory while the candidate held 0 MiB and asked " \
           "for 20 MiB more, within its budget of" in always["error"]["message"]
    assert greedy["status"] == "cuda_oom" and tries["greedy"].read_text() == "x"
