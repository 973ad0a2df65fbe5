"""CLI error paths: each is one clear message and exit code 2, before any training starts.

The dead-server case runs `python -m orchestrator` in a real subprocess (the most faithful
check that no traceback leaks); the others use typer's in-process CliRunner to stay fast.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.data import datasets
from orchestrator.store.journal import Journal
from tests.helpers import flat

SCRIPT_OPTIONS = [
    "--dataset", "--iterations", "--generator-model", "--improver-model", "--ollama-host",
    "--sandbox", "--data-dir", "--results-dir", "--name", "--resume", "--seed",
    "--history-size", "--timeout", "--memory", "--train-samples", "--test-samples",
    "--extended-prompt", "--no-history", "--no-reference", "--no-improver", "--no-pull",
    "--parallel",
]


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_args(data_dir: Path, results: Path, host: str, *extra: str) -> list[str]:
    return ["run", "--dataset", "fashionmnist", "--iterations", "2", "--sandbox", "local",
            "--generator-model", "coder:test", "--improver-model", "improver:test",
            "--ollama-host", host, "--data-dir", str(data_dir), "--results-dir", str(results),
            "--device", "cpu", *extra]


def invoke(*args: str):
    env = {"OLLAMA_HOST": None, "COLUMNS": "100"}
    return CliRunner().invoke(app, list(args), env=env)


def assert_user_error(result, *words: str) -> str:
    """Exit code 2, no traceback, and every word in the (unwrapped) output."""
    text = flat(result.output)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.output
    assert "error:" in text
    for word in words:
        assert word in text, (word, result.output)
    return text


# -- dead server (subprocess) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def dead_server_run(fashion_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    results = tmp_path_factory.mktemp("results")
    url = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "COLUMNS")}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *run_args(fashion_data_dir, results, url,
                                                         "--name", "dead")],
        capture_output=True, text=True, env=env, timeout=120)
    return proc, url, results


def test_dead_server_exits_2_naming_the_url_and_the_fix(dead_server_run) -> None:
    proc, url, results = dead_server_run
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output
    text = flat(proc.stderr)
    assert f"error: cannot reach the Ollama server at {url}" in text
    assert "ollama serve" in text
    assert "--ollama-host" in text
    assert not (results / "dead").exists()  # nothing to --resume: a plain re-run works


def test_dead_server_error_is_one_line(dead_server_run) -> None:
    proc, url, _ = dead_server_run
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error:"))
    assert url in line
    assert "ollama serve" in line


# -- in-process error paths --------------------------------------------------------------------

def test_missing_model_with_no_pull(fake_ollama, fashion_data_dir: Path, tmp_path: Path) -> None:
    server = fake_ollama(models=["coder:test"])
    result = invoke(*run_args(fashion_data_dir, tmp_path, server.url, "--name", "m",
                              "--no-pull"))
    assert_user_error(result, "improver:test", "ollama pull improver:test", server.url)
    assert "/api/pull" not in server.paths()
    assert server.chat_requests() == []
    assert not (tmp_path / "m").exists()


def test_a_bad_ollama_host_is_refused_in_one_line(fashion_data_dir: Path,
                                                 tmp_path: Path) -> None:
    result = invoke(*run_args(fashion_data_dir, tmp_path, "http://127.0.0.1:9", "--name", "h",
                              "--ollama-host", "ftp://gpu2"))
    text = assert_user_error(result, "setting ollama-host = ['http://127.0.0.1:9', 'ftp://gpu2']:"
                             " expected a server URL such as http://gpu1:11434, or a non-empty "
                             "list of them")
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1, text
    config = tmp_path / "run.toml"
    config.write_text('ollama-host = ["http://127.0.0.1:9", 11434]\n')
    result = invoke("run", "--config", str(config), "--name", "t")
    assert_user_error(result, "setting ollama-host = ['http://127.0.0.1:9', 11434]: expected a "
                      "string or a list of strings, or unset")
    assert not (tmp_path / "h").exists()


def test_one_dead_server_of_several_at_start_is_an_error_naming_it(
        fake_ollama, fashion_data_dir: Path, tmp_path: Path) -> None:
    live, dead = fake_ollama(), f"http://127.0.0.1:{closed_port()}"
    result = invoke(*run_args(fashion_data_dir, tmp_path, live.url, "--name", "two",
                              "--ollama-host", dead, "--parallel", "2"))
    assert_user_error(result, f"cannot reach the Ollama server at {dead}")
    assert "/api/version" in live.paths()  # every server is checked, this one first
    assert live.chat_requests() == []
    assert not (tmp_path / "two").exists()


def test_resume_without_name(fashion_data_dir: Path, tmp_path: Path) -> None:
    result = invoke(*run_args(fashion_data_dir, tmp_path, "http://127.0.0.1:9", "--resume"))
    assert_user_error(result, "--resume needs --name")


def test_resume_unknown_name(fashion_data_dir: Path, tmp_path: Path) -> None:
    result = invoke(*run_args(fashion_data_dir, tmp_path, "http://127.0.0.1:9", "--resume",
                              "--name", "ghost"))
    assert_user_error(result, "no run to resume", str(tmp_path / "ghost"))
    assert not (tmp_path / "ghost").exists()


def test_existing_run_without_resume(fashion_data_dir: Path, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "taken")
    journal.create({"dataset": "fashionmnist", "marker": 1})
    before = (journal.root / "config.json").read_bytes()
    result = invoke(*run_args(fashion_data_dir, tmp_path, "http://127.0.0.1:9",
                              "--name", "taken"))
    assert_user_error(result, "taken", "already exists", "--resume")
    assert (journal.root / "config.json").read_bytes() == before
    assert journal.records() == []


@pytest.mark.parametrize("name", ["../escaped-run", "a/b", "..", "/tmp/abs", "x\\y"])
def test_a_run_name_that_is_a_path_is_refused(fashion_data_dir: Path, tmp_path: Path,
                                               name: str) -> None:
    """--name is one folder under --results-dir: ../escaped-run would write beside it."""
    results = tmp_path / "results"
    for extra in ((), ("--resume",)):
        result = invoke(*run_args(fashion_data_dir, results, "http://127.0.0.1:9",
                                  "--name", name, *extra))
        assert_user_error(result, repr(name), "one folder name")
    cycles = invoke("cycles", "--name", name, "--results-dir", str(results), "--resume")
    assert_user_error(cycles, repr(name), "one folder name")
    assert not (tmp_path / "escaped-run").exists() and not results.exists()


def test_run_help_says_iterations_are_per_chain() -> None:
    text = flat(CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output)
    assert "Iterations per chain" in text and "--parallel P evaluates P times as many" in text
    assert "in total" not in text


def commands(group: typer.core.TyperGroup, path: tuple[str, ...] = ()) -> list[tuple]:
    """(the words that call it, the command) of every command and group under `group`."""
    found = []
    for name, command in group.commands.items():
        found.append(((*path, name), command))
        found += commands(command, (*path, name)) if hasattr(command, "commands") else []
    return found


def paragraphs(command: typer.core.TyperCommand) -> list[str]:
    """The command's help (its docstring) as the user should read it: paragraphs, flowing."""
    return [" ".join(p.split()) for p in inspect.cleandoc(command.help or "").split("\n\n")]


def test_every_commands_help_flows_in_paragraphs_not_in_its_docstrings_lines() -> None:
    """`orchestrator --help` lists each command's first paragraph, and `orchestrator CMD
    --help` shows every paragraph, each on one line when the terminal is wide enough."""
    wide = {"COLUMNS": "1000"}
    for path, command in [((), typer.main.get_command(app)), *commands(
            typer.main.get_command(app))]:
        shown = CliRunner().invoke(app, [*path, "--help"], env=wide)
        assert shown.exit_code == 0, shown.output
        for paragraph in paragraphs(command):
            assert paragraph in shown.output, (path, paragraph)
        if hasattr(command, "commands"):  # a group lists its commands' first paragraphs
            for name, sub in command.commands.items():
                assert paragraphs(sub)[0] in shown.output, ((*path, name), shown.output)


def test_invalid_setting_on_the_command_line(fashion_data_dir: Path, tmp_path: Path) -> None:
    result = invoke(*run_args(fashion_data_dir, tmp_path, "http://127.0.0.1:9",
                              "--name", "bad", "--history-size", "-2"))
    assert_user_error(result, "history-size")
    assert not (tmp_path / "bad").exists()


def test_unknown_key_in_config_file(fashion_data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text("[run]\niterashuns = 3\n")
    result = invoke(*run_args(fashion_data_dir, tmp_path, "http://127.0.0.1:9",
                              "--name", "cfg", "--config", str(config)))
    assert_user_error(result, "iterashuns")


def test_data_prepare_unknown_dataset_lists_valid_names(tmp_path: Path) -> None:
    result = invoke("data", "prepare", "nosuchset", "--data-dir", str(tmp_path))
    assert_user_error(result, "nosuchset", *datasets.SPECS)
    assert list(tmp_path.iterdir()) == []


def test_export_needs_best_or_corpus(tmp_path: Path) -> None:
    result = invoke("export", "somerun", "--results-dir", str(tmp_path))
    assert_user_error(result, "--best", "--corpus")


def test_run_help_lists_the_options_scripts_use() -> None:
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    listed = set(re.findall(r"--[a-z][a-z-]*", result.output))
    missing = [o for o in SCRIPT_OPTIONS if o not in listed]
    assert missing == []


def test_models_lists_and_marks_roles_then_pulls_with_progress(fake_ollama, tmp_path: Path
                                                               ) -> None:
    server = fake_ollama(models=["coder:test", "other:1b"], pullable=["new:3b"])
    config = tmp_path / "roles.toml"
    config.write_text('generator-model = "coder:test"\nimprover-model = "other:1b"\n')
    listed = CliRunner().invoke(app, ["models", "--ollama-host", server.url, "--config",
                                      str(config)])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.output.splitlines() if line.strip()}
    assert rows["coder:test"].rstrip().endswith("generator")
    assert rows["other:1b"].rstrip().endswith("improver")
    assert "Q4_K_M" in rows["coder:test"]

    pulled = CliRunner().invoke(app, ["models", "--ollama-host", server.url, "pull", "new:3b"])
    assert pulled.exit_code == 0, pulled.output
    assert "new:3b" in server.models
    missing = CliRunner().invoke(app, ["models", "--ollama-host", server.url, "pull", "nope"])
    assert missing.exit_code == 2


HOSTILE_ERROR = "boom\x1b]0;owned title\x07\x1b[2J\x1b[31mred\r\x9b6n done"


def test_show_prints_no_terminal_control_sequences(tmp_path: Path) -> None:
    """A candidate's error text may hold ANSI/OSC sequences: `show` must not pass them to the
    terminal; the journal keeps them as they were."""
    run_dir = tmp_path / "hostile"
    run_dir.mkdir()
    line = json.dumps({"iteration": 1, "status": "runtime_error", "accuracy": None,
                       "code_file": None, "error": {"type": "RuntimeError",
                                                    "message": HOSTILE_ERROR,
                                                    "traceback": "\x1b[1mtrace"},
                       "suggestions": None, "phase": "train\x1b[A"}) + "\n"
    (run_dir / "iterations.jsonl").write_text(line)
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "show", str(run_dir), "1"],
                          capture_output=True, text=True, check=True)
    assert "boom" in proc.stdout and "owned title" in proc.stdout and "done" in proc.stdout
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", proc.stdout)
    assert (run_dir / "iterations.jsonl").read_text() == line


def test_a_setting_of_the_wrong_type_is_refused_before_anything_is_journaled(
        fake_ollama, fashion_data_dir: Path, tmp_path: Path) -> None:
    server = fake_ollama()
    config = tmp_path / "run.toml"
    config.write_text('[run]\nlr = "0.01"\n')
    result = invoke(*run_args(fashion_data_dir, tmp_path, server.url, "--name", "typo",
                              "--config", str(config)))
    assert_user_error(result, "setting lr = '0.01': expected a number")
    assert not (tmp_path / "typo").exists() and server.chat_requests() == []


def test_thinking_asked_of_a_model_that_cannot_think_is_refused(
        fake_ollama, fashion_data_dir: Path, tmp_path: Path) -> None:
    server = fake_ollama()  # its models are not reasoning models
    config = tmp_path / "run.toml"
    config.write_text("[run]\nimprover-think = true\n")
    result = invoke(*run_args(fashion_data_dir, tmp_path, server.url, "--name", "nothink",
                              "--config", str(config)))
    assert_user_error(result, "improver-think = true", "improver:test cannot think")
    assert not (tmp_path / "nothink").exists() and server.chat_requests() == []
