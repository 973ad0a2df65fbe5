"""Shared fixtures: real Fashion-MNIST, tiny synthetic caches, the scripted Ollama server."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.data import datasets
from tests.fake_ollama import FakeOllama
from tests.helpers import write_tiny_cache

FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")
MODELS = ["coder:test", "improver:test"]


@pytest.fixture(scope="session")
def fashion_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset cache holding real Fashion-MNIST (Debian's dataset-fashion-mnist)."""
    if not FASHION_SOURCE.is_dir():
        pytest.skip(f"real Fashion-MNIST is not installed at {FASHION_SOURCE} "
                    "(apt-get install dataset-fashion-mnist)")
    data_dir = tmp_path_factory.mktemp("datasets")
    datasets.prepare("fashionmnist", data_dir, FASHION_SOURCE, progress=False)
    return data_dir


@pytest.fixture
def tiny_cache(tmp_path: Path) -> Path:
    return write_tiny_cache(tmp_path / "tiny")


@pytest.fixture
def fake_ollama():
    """Factory: start a scripted server with the test models; closed after the test."""
    servers: list[FakeOllama] = []

    def start(**kwargs: object) -> FakeOllama:
        kwargs.setdefault("models", MODELS)
        server = FakeOllama(**kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 causal LM with a real ChatML tokenizer (random weights), built once."""
    pytest.importorskip("transformers", reason="NOT TESTED: the [finetune] extra is not installed")
    from tests.tiny_lm import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny_lm") / "tiny-qwen2")
