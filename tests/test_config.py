"""Run settings (orchestrator/config.py): defaults < TOML file < command line; resume rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.config import (
    DEFAULT_MODEL,
    FIELDS,
    PRESETS,
    RESUMABLE,
    ConfigError,
    RunConfig,
    build,
    for_resume,
    load_toml,
)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def cli(**given: object) -> dict:
    """What the CLI passes: every option, None (or False for flags) when not given."""
    settings: dict = {}
    for f in dataclasses.fields(RunConfig):
        settings[f.name] = False if isinstance(f.default, bool) else None
    settings.update(given)
    return settings


def test_defaults_are_valid() -> None:
    cfg = RunConfig().validate()
    assert cfg.dataset == "cifar10"
    assert cfg.iterations == 100
    assert cfg.generator_model == cfg.improver_model == DEFAULT_MODEL
    assert cfg.sandbox == "docker"
    assert cfg.seed == 42
    assert cfg.history_size == 5
    assert build({}, {}) == cfg
    assert build({}, cli()) == cfg  # nothing given on the command line


def test_to_dict_round_trips() -> None:
    cfg = RunConfig(dataset="svhn", seed=3, max_params=10_000)
    assert RunConfig(**cfg.to_dict()) == cfg
    assert set(cfg.to_dict()) == FIELDS


def test_toml_run_table_with_dashes(tmp_path: Path) -> None:
    path = toml(tmp_path, """
[run]
dataset = "mnist"
iterations = 12
generator-model = "coder:1b"
history-size = 2
no-history = true
timeout = 30.5
""")
    settings = load_toml(path)
    assert settings == {"dataset": "mnist", "iterations": 12, "generator_model": "coder:1b",
                        "history_size": 2, "no_history": True, "timeout": 30.5}
    cfg = build(settings, {})
    assert (cfg.dataset, cfg.iterations, cfg.generator_model, cfg.history_size) == (
        "mnist", 12, "coder:1b", 2)
    assert cfg.no_history is True
    assert cfg.improver_model == DEFAULT_MODEL  # not in the file: the default


def test_toml_top_level_keys_with_underscores(tmp_path: Path) -> None:
    path = toml(tmp_path, 'dataset = "svhn"\nimprover_model = "judge:2b"\nseed = 9\n')
    assert load_toml(path) == {"dataset": "svhn", "improver_model": "judge:2b", "seed": 9}


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = toml(tmp_path, '[run]\ndataset = "mnist"\nitterations = 5\nhistory-sise = 1\n')
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert "itterations" in str(info.value)
    assert "history_sise" in str(info.value)
    assert "dataset" not in str(info.value).split(":")[-1]


@pytest.mark.parametrize("text", ["dataset = ", "[run\niterations = 3", "iterations = 3\n"
                                  "iterations = 4", "a = 'unterminated"])
def test_bad_toml_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_toml(tmp_path / "absent.toml")


def test_top_level_keys_beside_a_run_table_are_not_silently_dropped(tmp_path: Path) -> None:
    path = toml(tmp_path, 'dataset = "mnist"\n\n[run]\niterations = 5\n')
    try:
        settings = load_toml(path)
    except ConfigError:
        return  # rejecting the mix is fine too
    assert settings.get("dataset") == "mnist"


def test_precedence_defaults_file_cli() -> None:
    file = {"dataset": "mnist", "iterations": 20, "seed": 1, "no_history": True,
            "history_size": 3}
    cfg = build(file, cli(iterations=7, generator_model="coder:x"))
    assert cfg.iterations == 7  # CLI over file
    assert cfg.generator_model == "coder:x"  # CLI over default
    assert cfg.dataset == "mnist"  # file over default, CLI None does not override
    assert cfg.seed == 1
    assert cfg.history_size == 3
    assert cfg.no_history is True  # CLI False (flag not given) does not override the file
    assert cfg.improver_model == DEFAULT_MODEL  # neither: the default


def test_cli_zero_and_empty_values_do_override() -> None:
    cfg = build({"history_size": 4, "seed": 5}, cli(history_size=0, seed=0))
    assert cfg.history_size == 0
    assert cfg.seed == 0


@pytest.mark.parametrize("settings, word", [
    ({"iterations": 0}, "iterations"),
    ({"iterations": -3}, "iterations"),
    ({"sandbox": "vm"}, "sandbox"),
    ({"novelty": "maybe"}, "novelty"),
    ({"history_size": -1}, "history"),
    ({"timeout": 0}, "timeout"),
    ({"precision": "fp16"}, "precision"),
    ({"device": "tpu"}, "device"),
    ({"batch_size": 0}, "batch"),
    ({"parallel": 0}, "parallel"),
    ({"novelty_tau": 0.0}, "novelty-tau"),
    ({"novelty_tau": 1.5}, "novelty-tau"),
])
def test_invalid_values_are_config_errors(settings: dict, word: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(settings, {})
    assert word in str(info.value)
    with pytest.raises(ConfigError):  # the same value given on the command line
        build({}, cli(**settings))


def test_invalid_value_from_a_file(tmp_path: Path) -> None:
    path = toml(tmp_path, '[run]\nsandbox = "vm"\n')
    with pytest.raises(ConfigError, match="sandbox"):
        build(load_toml(path), cli())


def test_wrongly_typed_validated_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        build({"iterations": "five"}, {})


def test_unknown_setting_passed_to_build_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        build({"bogus": 1}, {})


# -- resume --------------------------------------------------------------------------------

STORED = {
    **RunConfig(name="run1", dataset="mnist", seed=7, iterations=10, generator_model="coder:a",
                improver_model="judge:b", ollama_host="http://old:11434", timeout=60.0,
                history_size=3).to_dict(),
    # What the CLI adds to config.json besides the settings:
    "models": {"coder:a": "d1", "judge:b": "d2"}, "sandbox_info": {"kind": "local"},
    "dataset_fingerprint": "f00", "version": "0.1", "python": "3.12",
}


def test_resume_keeps_the_stored_identity_and_reports_conflicts() -> None:
    cfg, ignored = for_resume(STORED, cli(
        name="run1", results_dir="elsewhere", dataset="cifar10", seed=8,
        generator_model="coder:z", improver_model="judge:b", history_size=9))
    assert cfg.dataset == "mnist"
    assert cfg.seed == 7
    assert cfg.generator_model == "coder:a"
    assert cfg.improver_model == "judge:b"
    assert cfg.history_size == 3
    assert cfg.name == "run1"
    assert sorted(ignored) == ["dataset", "generator_model", "history_size", "seed"]


def test_resume_applies_resumable_settings() -> None:
    assert {"iterations", "ollama_host", "timeout"} <= RESUMABLE
    cfg, ignored = for_resume(STORED, cli(iterations=25, ollama_host="http://new:11434",
                                          timeout=5.0, no_pull=True))
    assert ignored == []
    assert cfg.iterations == 25
    assert cfg.ollama_host == "http://new:11434"
    assert cfg.timeout == 5.0
    assert cfg.no_pull is True
    assert (cfg.dataset, cfg.seed) == ("mnist", 7)


def test_resume_with_nothing_given_is_the_stored_config() -> None:
    cfg, ignored = for_resume(STORED, cli())
    assert ignored == []
    assert cfg.to_dict() == {k: v for k, v in STORED.items() if k in FIELDS}


def test_resume_with_same_values_reports_nothing() -> None:
    _, ignored = for_resume(STORED, cli(dataset="mnist", seed=7, generator_model="coder:a"))
    assert ignored == []


def test_resume_validates_resumable_values() -> None:
    with pytest.raises(ConfigError, match="iterations"):
        for_resume(STORED, cli(iterations=0))


HOST_URL = "a server URL such as http://gpu1:11434, or a non-empty list of them"
HOST_TYPE = "a string or a list of strings, or unset"


@pytest.mark.parametrize("text, key, expected", [
    ('lr = "0.01"', "lr = '0.01'", "a number"),
    ("iterations = true", "iterations = True", "an integer"),
    ("iterations = 2.5", "iterations = 2.5", "an integer"),
    ('max-params = "1M"', "max-params = '1M'", "an integer, or unset"),
    ("extended-prompt = 1", "extended-prompt = 1", "true or false"),
    ("momentum = 1.5", "momentum = 1.5", "in [0, 1)"),
    ("lr = 0", "lr = 0", "a positive number"),
    ('memory = "lots"', "memory = 'lots'", "a size such as 8g or 512m"),
    ("train-samples = 0", "train-samples = 0", "at least 1, or unset"),
    ('ollama-host = ""', "ollama-host = ''", HOST_URL),
    ('ollama-host = "  "', "ollama-host = '  '", HOST_URL),
    ("ollama-host = []", "ollama-host = []", HOST_URL),
    ('ollama-host = ["gpu1", ""]', "ollama-host = ['gpu1', '']", HOST_URL),
    ('ollama-host = "gpu 1"', "ollama-host = 'gpu 1'", HOST_URL),
    ('ollama-host = "ftp://gpu1"', "ollama-host = 'ftp://gpu1'", HOST_URL),
    ("ollama-host = 11434", "ollama-host = 11434", HOST_TYPE),
    ('ollama-host = ["gpu1", 2]', "ollama-host = ['gpu1', 2]", HOST_TYPE),
])
def test_a_setting_of_the_wrong_type_or_range_is_refused(tmp_path: Path, text: str, key: str,
                                                         expected: str) -> None:
    with pytest.raises(ConfigError) as refused:
        build(load_toml(toml(tmp_path, f"[run]\n{text}\n")), cli())
    assert str(refused.value) == f"setting {key}: expected {expected}"


def test_numbers_given_as_integers_are_fine_for_floats(tmp_path: Path) -> None:
    cfg = build(load_toml(toml(tmp_path, "[run]\nweight-decay = 0\ntimeout = 60\n")), cli())
    assert (cfg.weight_decay, cfg.timeout) == (0, 60)


# -- several Ollama servers ------------------------------------------------------------------

def test_ollama_host_may_be_a_list_in_toml_normalised(tmp_path: Path) -> None:
    path = toml(tmp_path, '[run]\nollama-host = ["gpu1", "http://gpu2:11500/", "gpu1:11434"]\n')
    cfg = build(load_toml(path), cli())
    assert cfg.ollama_host == ["http://gpu1:11434", "http://gpu2:11500"]  # the repeat dropped
    assert cfg.hosts() == ["http://gpu1:11434", "http://gpu2:11500"]
    assert build({}, cli(ollama_host="gpu3")).hosts() == ["http://gpu3:11434"]


def test_without_ollama_host_the_default_is_ollama_host_env(monkeypatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "envhost:1234")
    cfg = build({}, cli())
    assert cfg.ollama_host is None and cfg.hosts() == ["http://envhost:1234"]


def test_resume_may_change_the_list_of_hosts() -> None:
    stored = {**STORED, "ollama_host": ["http://a:11434", "http://b:11434"]}
    cfg, ignored = for_resume(stored, cli(ollama_host=["c", "a"]))
    assert ignored == [] and cfg.hosts() == ["http://c:11434", "http://a:11434"]
    cfg, _ = for_resume(stored, cli())
    assert cfg.hosts() == ["http://a:11434", "http://b:11434"]


def test_edit_format_defaults_to_whole_and_the_paper_preset_keeps_it() -> None:
    assert build({}, {}).edit_format == "whole"
    assert build({"edit_format": "udiff"}, {"preset": "paper"}).edit_format == "udiff"  # file wins
    assert build({}, {"preset": "paper"}).edit_format == "whole"
    assert PRESETS["paper"]["edit_format"] == "whole"
    with pytest.raises(ConfigError, match="setting edit-format = 'diff': expected whole, "
                                          "search-replace, udiff"):
        build({"edit_format": "diff"}, {})
    with pytest.raises(ConfigError, match="edit-match-threshold = 0: expected in"):
        build({"edit_match_threshold": 0}, {})
