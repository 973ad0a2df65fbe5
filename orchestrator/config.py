"""Run settings: defaults, an optional TOML file, then command-line flags."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "qwen2.5-coder:7b"
# Settings that may change when a stopped run is resumed; the rest are the run's identity.
RESUMABLE = frozenset({"iterations", "ollama_host", "timeout", "no_pull", "request_timeout",
                       "keep_alive", "warm_pool"})
# A Go duration, as Ollama parses keep_alive: "30m", "1h30m", "0" (unload), "-1m" (forever).
DURATION = re.compile(r"[-+]?(0|((\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h))+)")


class ConfigError(ValueError):
    """A setting is unknown or invalid."""


@dataclass
class RunConfig:
    name: str | None = None
    dataset: str = "cifar10"
    iterations: int = 100
    generator_model: str = DEFAULT_MODEL
    improver_model: str = DEFAULT_MODEL
    ollama_host: str | None = None
    sandbox: str = "docker"
    data_dir: str | None = None
    results_dir: str = "results"
    seed: int = 42
    history_size: int = 5
    # Ablations and prompt variants (paper sections 3.2 and 5).
    extended_prompt: bool = False
    top_k: int = 3
    no_history: bool = False
    no_reference: bool = False
    no_improver: bool = False
    no_pull: bool = False
    parallel: int = 1  # independent search chains sharing the server and the GPU
    # Novelty (NNGPT): "record" measures it, "reject" regenerates near-duplicates.
    novelty: str = "record"
    novelty_tau: float = 0.90
    novelty_retries: int = 3
    max_params: int | None = None
    # Generation.
    temperature: float = 0.7
    top_p: float = 0.9
    num_predict: int = 2048
    num_ctx: int | None = None
    request_timeout: float = 600.0
    keep_alive: str = "30m"  # how long Ollama keeps a model loaded after a request
    # Evaluation protocol.
    train_samples: int | None = None
    test_samples: int | None = None
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    precision: str = "fp32"
    device: str = "auto"
    # Sandbox limits.
    timeout: float = 1800.0
    memory: str = "8g"
    cpus: float | None = None
    gpus: str = "auto"
    runtime: str | None = None
    warm_pool: int | None = None  # warm sandboxes kept ahead per chain; None: sized as measured
    offline_build: bool = False
    prompts_dir: str | None = None

    def validate(self) -> RunConfig:
        checks = [
            (self.iterations >= 1, "iterations must be at least 1"),
            (self.history_size >= 0, "history-size must be 0 or more"),
            (self.timeout > 0, "timeout must be positive"),
            (self.sandbox in ("local", "docker"), "sandbox must be 'local' or 'docker'"),
            (self.precision in ("fp32", "bf16"), "precision must be 'fp32' or 'bf16'"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.batch_size >= 1, "batch-size must be at least 1"),
            (self.parallel >= 1, "parallel must be at least 1"),
            (self.warm_pool is None or self.warm_pool >= 0, "warm-pool must be 0 or more"),
            (self.novelty in ("record", "reject"), "novelty must be 'record' or 'reject'"),
            (0 < self.novelty_tau <= 1, "novelty-tau must be in (0, 1]"),
            (isinstance(self.keep_alive, str) and DURATION.fullmatch(self.keep_alive) is not None,
             "keep-alive must be a duration like 30m, 1h or 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def load_toml(path: Path) -> dict:
    """Settings from a TOML file, top-level or in a [run] table; keys are option names with
    '-' or '_'."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    run = data.pop("run", {})
    if not isinstance(run, dict):
        raise ConfigError(f"{path}: [run] must be a table")
    data.update(run)
    settings = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(settings) - FIELDS)
    if unknown:
        raise ConfigError(f"unknown settings in {path}: {', '.join(unknown)}")
    return settings


def build(file_settings: dict, cli_settings: dict) -> RunConfig:
    """Defaults < file < command line. CLI values of None (or False flags) mean 'not given'."""
    merged = dict(file_settings)
    merged.update({k: v for k, v in cli_settings.items() if v is not None and v is not False})
    try:
        return RunConfig(**merged).validate()
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def for_resume(stored: dict, cli_settings: dict) -> tuple[RunConfig, list[str]]:
    """The stored config, with the few settings a resume may change; lists ignored ones."""
    settings = {k: v for k, v in stored.items() if k in FIELDS}
    ignored = []
    for key, value in cli_settings.items():
        if value is None or value is False or key in ("name", "results_dir"):
            continue
        if key in RESUMABLE:
            settings[key] = value
        elif settings.get(key) != value:
            ignored.append(key)
    return RunConfig(**settings).validate(), ignored
