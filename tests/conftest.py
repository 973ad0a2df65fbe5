"""Shared fixtures: real Fashion-MNIST, tiny synthetic caches, the scripted Ollama server."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from orchestrator.data import datasets
from tests.fake_ollama import FakeOllama
from tests.helpers import write_tiny_cache

FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")
MODELS = ["coder:test", "improver:test"]
FASHION_TESTS = pytest.StashKey[int]()  # collected tests that need real Fashion-MNIST


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Count the collected tests that need real Fashion-MNIST, for the skip reason."""
    config.stash[FASHION_TESTS] = sum("fashion_data_dir" in getattr(item, "fixturenames", ())
                                      for item in items)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One loud line at the end of the run: what was skipped, grouped by reason, with counts."""
    reasons = Counter(_skip_reason(rep) for rep in terminalreporter.stats.get("skipped", []))
    if reasons:
        parts = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common())
        terminalreporter.write_line(f"NOT TESTED ({sum(reasons.values())} skipped): {parts}",
                                    red=True, bold=True)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ").removeprefix("NOT TESTED: ")


@pytest.fixture(scope="session")
def fashion_data_dir(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset cache holding real Fashion-MNIST (Debian's dataset-fashion-mnist)."""
    if not FASHION_SOURCE.is_dir():
        count = request.config.stash.get(FASHION_TESTS, 0)
        pytest.skip(f"NOT TESTED: real Fashion-MNIST is not installed at {FASHION_SOURCE} "
                    f"(apt-get install dataset-fashion-mnist): all {count} end-to-end tests "
                    "that train on it are skipped")
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
    for server in servers:
        server.check_script()


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 causal LM with a real ChatML tokenizer (random weights), built once."""
    pytest.importorskip("transformers", reason="NOT TESTED: the [finetune] extra is not installed")
    from tests.tiny_lm import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny_lm") / "tiny-qwen2")
