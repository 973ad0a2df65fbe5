"""A run's settings as its config.json recorded them: the few a researcher looks for first, and
which settings differ between runs.

The settings are `RunConfig`'s fields (what `orchestrator run` was given); config.json also
records facts measured at start (model digests, versions, the dataset's fingerprint), compared
as well. A key a config lacks means what `config.LEGACY` says it meant before it existed.
"""

from __future__ import annotations

import dataclasses
import json

from orchestrator.config import LEGACY, RunConfig

SETTINGS = tuple(f.name for f in dataclasses.fields(RunConfig))
# Facts recorded at start that change what a run measures; the GPU plan and the sandbox's
# description are measurements of the machine, not settings, and are left out.
RECORDED = ("models", "version", "ollama_version", "python", "dataset_fingerprint",
            "num_ctx_per_model")
VALUE_CHARS = 200


def _value(config: dict, key: str) -> object:
    return config.get(key, LEGACY.get(key))


def _shown(config: dict, key: str) -> str:
    """The setting as text, "not recorded" where the config lacks it (and LEGACY too)."""
    return _text(_value(config, key)) if key in config or key in LEGACY else "not recorded"


def _text(value: object) -> str:
    """A setting as one line: strings as they are, None as "none", the rest as JSON."""
    if value is None:
        return "none"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…"


def _subset(config: dict) -> str:
    train, test = config.get("train_samples"), config.get("test_samples")
    if train is None and test is None:
        return "full"
    def part(n: object) -> str:
        return "all" if n is None else str(n)

    return f"{part(train)} train / {part(test)} test images"


def key_settings(config: dict) -> list[tuple[str, str]]:
    """What a researcher looks for first on a run's page, as (label, text); `edit format` only
    where the config has one."""
    keys = [("dataset", "dataset"), ("epochs", "epochs"), ("seed", "seed"),
            ("K (feedback memory)", "history_size"), ("generator", "generator_model"),
            ("improver", "improver_model"), ("selected on", "select_on")]
    rows = [(label, _shown(config, key)) for label, key in keys]
    rows.insert(1, ("subset", _subset(config)))
    if "edit_format" in config:
        rows.append(("edit format", _shown(config, "edit_format")))
    return rows


def differing(configs: list[dict]) -> list[dict]:
    """The settings, then the recorded facts, whose values are not the same in every config:
    `{key, recorded, per_run}` with one text per config ("not recorded" where absent). The run
    name is left out: it names the columns."""
    out = []
    for keys, recorded in ((SETTINGS, False), (RECORDED, True)):
        for key in keys:
            if key == "name":
                continue
            values = [_value(c, key) for c in configs]
            if any(v != values[0] for v in values[1:]):
                out.append({"key": key, "recorded": recorded,
                            "per_run": [_shown(c, key) for c in configs]})
    return out
