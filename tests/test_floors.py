"""The dependency floors in pyproject.toml are enough: a scripted end-to-end search, its report
and a model import run from a fresh virtualenv that holds exactly those versions (each `>=`
bound of the core dependencies and the `local` extra pinned with `==`).

The virtualenv is built once per set of pins (under .cache/floors/, keyed by their hash) and
reused; it holds the dependencies only, and runs this checkout's code. Building it needs the
package index: where pip cannot reach one, the test fails with pip's own words.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.version import Version

from tests import replies
from tests.test_search_e2e import DIAGNOSIS, by_role, read_records, run_args

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "floors"
EXTRAS = ("local",)  # what the scripted search needs beyond the core: the local sandbox
# PyPI's Linux torch wheels at the local extra's floor are CUDA builds of gigabytes; the CPU
# build installed here instead (a local wheel on this project's machines) is a newer torch.
# The floor itself rests on the APIs the runner uses (torch.utils.deterministic is 2.1's).
INSTEAD = {"torch": "2.13.0"}
FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([^,;\s]+)")


def floor_pins(pyproject: Path = ROOT / "pyproject.toml",
               extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """Each core dependency's (and `extras`'s) `>=` floor: name -> version."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = [*project["dependencies"],
                    *(r for extra in extras for r in project["optional-dependencies"][extra])]
    pins = {}
    for requirement in requirements:
        match = FLOOR.match(requirement)
        assert match, f"{requirement!r} states no >= floor"
        pins[match[1].lower()] = match[2]
    return pins


def constraints(pins: dict[str, str]) -> str:
    """The pins as a pip constraints file, with INSTEAD's versions where they apply."""
    return "".join(f"{name}=={INSTEAD.get(name, version)}\n" for name, version in pins.items())


def floors_venv(pins: dict[str, str]) -> Path:
    """A virtualenv with exactly the pinned versions, built once per constraints file; the
    virtualenvs of other (earlier) floors are removed."""
    text = constraints(pins)
    key = hashlib.sha256(f"{sys.version}\n{text}".encode()).hexdigest()[:16]
    target = CACHE / key
    if (target / "complete").exists():
        return target
    shutil.rmtree(CACHE, ignore_errors=True)
    venv.create(target, with_pip=True)
    (target / "constraints.txt").write_text(text)
    pip = subprocess.run(
        [str(target / "bin" / "python"), "-m", "pip", "install", "-q",
         "-c", str(target / "constraints.txt"), *pins],
        capture_output=True, text=True, timeout=1200)
    if pip.returncode != 0:
        pytest.fail(f"pip could not install the floors:\n{text}\n{pip.stdout}\n{pip.stderr}")
    (target / "complete").write_text(text)
    return target


def installed(python: Path, names: list[str]) -> dict[str, str]:
    """The versions of `names` the interpreter sees."""
    code = ("import importlib.metadata as m, sys\n"
            "for name in sys.argv[1:]: print(name, m.version(name))")
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split() for line in out.splitlines())


@pytest.fixture(scope="module")
def floors_python() -> Path:
    """The interpreter of the floors' virtualenv, after checking it holds exactly them."""
    pins = floor_pins()
    python = floors_venv(pins) / "bin" / "python"
    versions = {name: Version(Version(v).public)  # torch 2.13.0+cpu is 2.13.0
                for name, v in installed(python, list(pins)).items()}
    assert versions == {name: Version(INSTEAD.get(name, v)) for name, v in pins.items()}
    return python


def orchestrator(python: Path, *args: str) -> subprocess.CompletedProcess:
    """`orchestrator ARGS` run by `python` on this checkout's code."""
    return subprocess.run([str(python), "-m", "orchestrator", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900)


@pytest.mark.slow
def test_a_scripted_search_runs_on_the_dependency_floors(floors_python, fake_ollama,
                                                         fashion_data_dir, tmp_path):
    """`run --help`, a two-iteration search on the local sandbox, and its report."""
    usage = orchestrator(floors_python, "run", "--help")
    assert usage.returncode == 0 and "--improver-model" in usage.stdout, usage.stderr
    server = fake_ollama(default=by_role([replies.VALID_NET, replies.VALID_NET_WIDER],
                                         DIAGNOSIS[:2]))
    run = orchestrator(floors_python, "run",
                       *run_args(server, fashion_data_dir, tmp_path, "floors", 2))
    assert run.returncode == 0, run.stdout + run.stderr
    records = read_records(tmp_path / "floors")
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert [r["suggestions"]["suggestions"] for r in records] == [
        "suggestion number 0", "suggestion number 1"]
    report = orchestrator(floors_python, "report", str(tmp_path / "floors"))
    assert report.returncode == 0 and "Success rate" in report.stdout, report.stderr
    assert (tmp_path / "floors" / "trajectory.png").stat().st_size > 1000  # matplotlib's


def test_a_model_publishes_on_the_dependency_floors(floors_python, fake_ollama, tmp_path):
    """A merged folder into Ollama (finetune/publish.py: blobs, /api/create, the client's
    close), on the core dependencies alone."""
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    (merged / "model.safetensors").write_bytes(b"weights")
    server = fake_ollama()
    code = ("import sys; from orchestrator.finetune.publish import publish; "
            "print(publish(sys.argv[1], sys.argv[2], 'tuned:1', 'coder:test', progress=False))")
    published = subprocess.run([str(floors_python), "-c", code, server.url, str(merged)],
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert published.returncode == 0, published.stderr
    assert "tuned:1" in server.models and published.stdout.strip()
