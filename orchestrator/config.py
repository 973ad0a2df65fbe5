"""Run settings: defaults, an optional TOML file, then command-line flags."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "qwen2.5-coder:7b"
EDIT_FORMATS = ("whole", "search-replace", "udiff")  # search/edits.py applies the edits
# Settings that may change when a stopped run is resumed; the rest are the run's identity.
RESUMABLE = frozenset({"iterations", "ollama_host", "timeout", "no_pull", "request_timeout",
                       "keep_alive", "warm_pool", "ray_address", "track", "tracking_uri",
                       "min_gpu_budget"})
# A Go duration, as Ollama parses keep_alive: "30m", "1h30m", "0" (unload), "-1m" (forever).
DURATION = re.compile(r"[-+]?(0|((\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h))+)")


# The protocol of "Resource-Efficient Iterative LLM-Based NAS with Feedback Memory" (Gu,
# Ignatov, Timofte, arXiv 2603.12091; the abstract and section 4.1 "Experimental Setup"):
# CIFAR-10, one epoch of SGD (momentum 0.9, weight decay 5e-4, lr 0.01, cosine annealing),
# batch 128, random crop with padding 4 and horizontal flip (the runner's fixed augmentation),
# K = 5 triples, at most 2,048 new tokens, a 30-minute timeout, fixed seeds, and the one-epoch
# *test* accuracy as the metric that steers the search. The temperature and nucleus values are
# those of this project's defaults (the digits are not legible in the copy of the paper kept in
# ../shared/seeds); see README "Trusting the proxy".
PRESETS: dict[str, dict] = {
    "paper": {
        "dataset": "cifar10", "epochs": 1, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
        "batch_size": 128, "history_size": 5, "temperature": 0.7, "top_p": 0.9,
        "num_predict": 2048, "timeout": 1800.0, "seed": 42, "select_on": "test", "repeats": 1,
        "precision": "fp32", "train_samples": None, "test_samples": None,
        "extended_prompt": False, "no_history": False, "no_reference": False,
        "no_improver": False, "edit_format": "whole",
    },
}
# What a stored config without a setting meant before the setting existed.
LEGACY = {"select_on": "test"}


class ConfigError(ValueError):
    """A setting is unknown or invalid."""


NAME_RULE = "one folder name: no '/', '\\', '..' or NUL"


def plain_name(name: str, flag: str = "--name") -> str:
    """`name` if it is one plain path component, a folder right under the results folder;
    else ConfigError (a name such as ../x would write outside it)."""
    if not _is_plain(name):
        raise ConfigError(f"{flag} {name!r} is not a run name: use {NAME_RULE}")
    return name


@dataclass
class RunConfig:
    name: str | None = None
    dataset: str = "cifar10"
    iterations: int = 100
    generator_model: str = DEFAULT_MODEL
    improver_model: str = DEFAULT_MODEL
    # One Ollama server, or several: the chains are spread over them (None: OLLAMA_HOST, else
    # the local default).
    ollama_host: str | list[str] | None = None
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
    # Where evaluations run: "local" (this machine) or "ray" (a task each, on a Ray cluster).
    executor: str = "local"
    ray_address: str | None = None  # None: RAY_ADDRESS, else a new local Ray
    ray_gpus: float | None = None  # GPUs per evaluation; None: 1 if the cluster has GPUs
    # Novelty (NNGPT): "record" measures it, "reject" regenerates near-duplicates.
    novelty: str = "record"
    novelty_tau: float = 0.90
    novelty_retries: int = 3
    max_params: int | None = None
    # What the Code Generator writes: "whole" files (the paper), or edits of the reference (the
    # current code after a failure): "search-replace" blocks or a "udiff" (search/edits.py).
    edit_format: str = "whole"
    edit_match_threshold: float = 0.95  # difflib ratio a fuzzy-placed edit block needs
    # Generation.
    temperature: float = 0.7
    top_p: float = 0.9
    num_predict: int = 2048
    num_ctx: int | None = None
    request_timeout: float = 600.0
    keep_alive: str = "30m"  # how long Ollama keeps a model loaded after a request
    # Ollama's think option for reasoning models, per role (None: not sent, and the server lets
    # a model that can think think); sent only to models that can think. think_tokens are added
    # to num_predict (and num_ctx) wherever the model will think (llm/models.py).
    generator_think: bool | None = False
    improver_think: bool | None = None
    think_tokens: int = 4096
    # Evaluation protocol. Selection on a held-out validation part of the training set (the
    # search, the best and the Improver see its accuracy; test accuracy is recorded, steers
    # nothing), or on the test set as the paper does ("test").
    select_on: str = "val"
    val_fraction: float = 0.1
    repeats: int = 1  # evaluations per candidate, with training seeds seed, seed + 1, ...
    preset: str | None = None  # a named protocol (PRESETS) under the file and the flags
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
    # The GPU plan refuses a run whose candidates would each get less GPU memory than this.
    min_gpu_budget: str = "2g"
    runtime: str | None = None
    warm_pool: int | None = None  # warm sandboxes kept ahead per chain; None: sized as measured
    offline_build: bool = False
    prompts_dir: str | None = None
    # A mirror of the journal: "mlflow" (None: none), to tracking_uri (None: MLFLOW_TRACKING_URI,
    # else ./mlruns); see orchestrator/store/tracking.py.
    track: str | None = None
    tracking_uri: str | None = None

    def validate(self) -> RunConfig:
        """Every setting of its type and in its range, else ConfigError naming the key, the
        value and what is expected (a TOML `lr = "0.01"` would fail every candidate)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _has_type(value, HINTS[f.name]):
                raise ConfigError(_refusal(f.name, value, _type_name(HINTS[f.name])))
        for key, ok, expected in self._ranges():
            if not ok:
                raise ConfigError(_refusal(key, getattr(self, key), expected))
        self.ollama_host = _normalized_hosts(self.ollama_host)
        return self

    def hosts(self) -> list[str]:
        """The Ollama servers of the run, normalised: ollama_host, else OLLAMA_HOST or the
        local default."""
        from orchestrator.llm.client import default_host

        hosts = _normalized_hosts(self.ollama_host)
        return [hosts] if isinstance(hosts, str) else hosts or [default_host()]

    def _ranges(self) -> list[tuple[str, bool, str]]:
        """(setting, whether its value is allowed, what is expected)."""
        def optional(value: float | None, low: float) -> bool:
            return value is None or value >= low

        return [
            ("name", self.name is None or _is_plain(self.name), NAME_RULE),
            ("iterations", self.iterations >= 1, "at least 1"),
            ("history_size", self.history_size >= 0, "0 or more"),
            ("top_k", self.top_k >= 0, "0 or more"),
            ("timeout", self.timeout > 0, "a positive number of seconds"),
            ("request_timeout", self.request_timeout > 0, "a positive number of seconds"),
            ("sandbox", self.sandbox in ("local", "docker"), "local or docker"),
            ("precision", self.precision in ("fp32", "bf16"), "fp32 or bf16"),
            ("device", self.device in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", self.lr > 0, "a positive number"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("temperature", self.temperature >= 0, "0 or more"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("num_ctx", optional(self.num_ctx, 1), "at least 1, or unset"),
            ("train_samples", optional(self.train_samples, 1), "at least 1, or unset"),
            ("test_samples", optional(self.test_samples, 1), "at least 1, or unset"),
            ("max_params", optional(self.max_params, 1), "at least 1, or unset"),
            ("cpus", self.cpus is None or self.cpus > 0, "a positive number, or unset"),
            ("memory", MEMORY.fullmatch(self.memory.strip().lower()) is not None,
             "a size such as 8g or 512m"),
            ("min_gpu_budget", MEMORY.fullmatch(self.min_gpu_budget.strip().lower()) is not None,
             "a size such as 2g or 512m"),
            ("parallel", self.parallel >= 1, "at least 1"),
            ("ollama_host", _valid_hosts(self.ollama_host),
             "a server URL such as http://gpu1:11434, or a non-empty list of them"),
            ("executor", self.executor in ("local", "ray"), "local or ray"),
            ("ray_gpus", optional(self.ray_gpus, 0), "0 or more, or unset"),
            ("warm_pool", optional(self.warm_pool, 0), "0 or more, or unset"),
            ("novelty", self.novelty in ("record", "reject"), "record or reject"),
            ("novelty_tau", 0 < self.novelty_tau <= 1, "in (0, 1]"),
            ("novelty_retries", self.novelty_retries >= 0, "0 or more"),
            ("edit_format", self.edit_format in EDIT_FORMATS, ", ".join(EDIT_FORMATS)),
            ("edit_match_threshold", 0 < self.edit_match_threshold <= 1, "in (0, 1]"),
            ("think_tokens", self.think_tokens >= 0, "0 or more"),
            ("keep_alive", DURATION.fullmatch(self.keep_alive) is not None,
             "a duration like 30m, 1h or 0"),
            ("select_on", self.select_on in ("val", "test"), "val or test"),
            ("val_fraction", 0 < self.val_fraction < 1, "in (0, 1)"),
            ("repeats", self.repeats >= 1, "at least 1"),
            ("preset", self.preset is None or self.preset in PRESETS,
             f"one of {', '.join(PRESETS)}, or unset"),
            ("track", self.track in (None, "mlflow"), "mlflow, or unset"),
            ("tracking_uri", self.tracking_uri is None or self.tracking_uri.strip() != "",
             "a tracking URI or a folder, or unset"),
        ]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
HINTS = typing.get_type_hints(RunConfig)
MEMORY = re.compile(r"\d+(\.\d+)?[kmgt]?b?")  # as sandbox.base.parse_size reads it


def _has_type(value: object, hint: object) -> bool:
    """isinstance for the settings' hints (X, or X | None); an int is a float, a bool is not a
    number."""
    if isinstance(hint, types.UnionType):
        return any(_has_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def _is_plain(name: str) -> bool:
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def _valid_hosts(hosts: str | list[str] | None) -> bool:
    """None, or one host or a non-empty list of hosts, each a non-empty address without spaces
    and, if it names a scheme, http or https."""
    if hosts is None:
        return True
    listed = [hosts] if isinstance(hosts, str) else hosts
    return bool(listed) and all(
        h.strip() and not re.search(r"\s", h.strip())
        and ("://" not in h or h.strip().split("://")[0] in ("http", "https"))
        for h in listed)


def _normalized_hosts(hosts: str | list[str] | None) -> str | list[str] | None:
    """Each host as normalize_host writes it ('gpu1' -> 'http://gpu1:11434'), repeats
    dropped; a single host stays a string."""
    if hosts is None:
        return None
    from orchestrator.llm.client import normalize_host

    if isinstance(hosts, str):
        return normalize_host(hosts)
    return list(dict.fromkeys(normalize_host(h) for h in hosts))


def _type_name(hint: object) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list[str]: "a list of strings"}
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    optional = ", or unset" if type(None) in typing.get_args(hint) else ""
    return " or ".join(names.get(a, str(a)) for a in args) + optional


def _refusal(key: str, value: object, expected: str) -> str:
    return f"setting {key.replace('_', '-')} = {value!r}: expected {expected}"


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
    """Defaults < preset < file < command line. CLI values of None (or False flags) mean 'not
    given'."""
    given = {k: v for k, v in cli_settings.items() if v is not None and v is not False}
    preset = given.get("preset", file_settings.get("preset"))
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"setting preset = {preset!r}: expected one of {', '.join(PRESETS)}")
    merged = {**PRESETS.get(preset, {}), **file_settings, **given}
    try:
        return RunConfig(**merged).validate()
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def for_resume(stored: dict, cli_settings: dict) -> tuple[RunConfig, list[str]]:
    """The stored config, with the few settings a resume may change; lists ignored ones."""
    settings = {**LEGACY, **{k: v for k, v in stored.items() if k in FIELDS}}
    ignored = []
    for key, value in cli_settings.items():
        if value is None or value is False or key in ("name", "results_dir"):
            continue
        if key in RESUMABLE:
            settings[key] = value
        elif settings.get(key) != value:
            ignored.append(key)
    return RunConfig(**settings).validate(), ignored
