"""The built wheel, installed in a fresh virtualenv, works without the source tree.

The prompt templates and the sandbox image's sources live at the repository's top level; the
wheel must carry them under `orchestrator/_resources/` (pyproject.toml, `force-include`), or an
installed `orchestrator` cannot render a prompt or build its sandbox image. One wheel and one
virtualenv (the wheel plus torch) are built for the whole module, outside the source tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import outcomes as fc
from tests import replies
from tests.test_search_e2e import DIAGNOSIS, by_role, read_records, run_args, user_message

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = "orchestrator/_resources"
TORCH = "torch==2.13.0"  # as tests/run.sh: a CPU wheel from pip's index, reused from its cache
PROMPTS = sorted(p.name for p in (ROOT / "prompts").glob("*.txt"))
# Folders a build never writes but concurrent test runs do; ignored when checking the tree.
NOISE = {"__pycache__", ".pytest_cache", ".ruff_cache", ".venv"}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    python: Path
    cli: Path
    site_packages: Path
    work: Path  # an empty folder outside the source tree, the installed commands' cwd

    @property
    def resources(self) -> Path:
        return self.site_packages / RESOURCES


def clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """This process's environment without anything that could put the source tree on the
    installed interpreter's path; the venv's bin first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
                        "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def tree_state() -> set[str] | None:
    """The checkout's `git status`, ignored files included, less the noise; None if no git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain=v1", "--ignored",
             "--untracked-files=all", "-z"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {entry for entry in out.split("\0")
            if entry and not NOISE.intersection(Path(entry[3:]).parts)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT), f"the tmp dir {base} is inside {ROOT}"
    dist = base / "dist"
    before = tree_state()
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(ROOT)],
        capture_output=True, text=True, cwd=base, timeout=600)
    if build.returncode != 0:
        pytest.fail("cannot build the wheel: `pip wheel --no-deps` (build isolation: it needs "
                    "hatchling from PyPI or a find-links folder) exited "
                    f"{build.returncode}:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}",
                    pytrace=False)
    after = tree_state()
    if before is not None and after is not None:
        assert not after - before, f"building the wheel left files in {ROOT}: {after - before}"
    (wheel,) = dist.glob("orchestrator-*.whl")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, cwd=base)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel), TORCH],
        capture_output=True, text=True, cwd=base, env=clean_env(venv), timeout=1200)
    if pip.returncode != 0:
        pytest.fail(f"cannot install the wheel and {TORCH} into {venv}:\n"
                    f"{pip.stdout[-4000:]}\n{pip.stderr[-4000:]}", pytrace=False)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, cwd=base, env=clean_env(venv)).stdout
    work = base / "work"
    work.mkdir()
    return Installed(wheel, venv, python, venv / "bin" / "orchestrator",
                     Path(site.strip()).resolve(), work)


def test_the_wheel_carries_the_package_prompts_and_sandbox_sources(installed):
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
    expected = {f"{RESOURCES}/prompts/{name}" for name in PROMPTS}
    expected |= {f"{RESOURCES}/{name}" for name in (
        "sandbox-image/runner.py", "sandbox-image/offline-base.sh", "Dockerfile.sandbox")}
    assert f"{RESOURCES}/prompts/generator.txt" in expected
    expected |= {f"orchestrator/ui/{name}" for name in (  # the web view works offline
        "static/ui.js", "static/app.css", "static/vendor/chart.umd.min.js",
        "static/vendor/chart.js.LICENSE.md", "templates/base.html", "templates/iteration.html")}
    packages = sorted({p.parent for p in (ROOT / "orchestrator").rglob("*.py")
                       if not NOISE.intersection(p.parts) and "_resources" not in p.parts})
    assert len(packages) > 1, packages  # the package and its subpackages
    expected |= {(p / "__init__.py").relative_to(ROOT).as_posix() for p in packages}
    assert not expected - names, f"missing from {installed.wheel.name}: {sorted(expected - names)}"
    # Byte for byte the files of the checkout.
    with zipfile.ZipFile(installed.wheel) as whl:
        for name in PROMPTS:
            assert whl.read(f"{RESOURCES}/prompts/{name}") == (ROOT / "prompts" / name).read_bytes()
        assert whl.read(f"{RESOURCES}/sandbox-image/runner.py") == \
            (ROOT / "sandbox-image" / "runner.py").read_bytes()


def test_the_installed_package_finds_its_resources_in_site_packages(installed):
    probe = """if True:
        import importlib.util, json, sys
        import orchestrator
        from orchestrator import resources as r
        try:
            tests = importlib.util.find_spec("tests.fake_ollama") is not None
        except ModuleNotFoundError:
            tests = False
        print(json.dumps({"file": orchestrator.__file__, "root": str(r.ROOT),
                          "files": [str(p) for p in (r.PROMPTS_DIR / "generator.txt",
                                    r.RUNNER_PATH, r.OFFLINE_BASE_SCRIPT, r.DOCKERFILE)],
                          "path": sys.path, "tests": tests}))
    """
    out = subprocess.run([str(installed.python), "-c", probe], capture_output=True, text=True,
                         cwd=installed.work, env=clean_env(installed.venv))
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    site = installed.site_packages
    assert Path(seen["file"]).resolve() == site / "orchestrator" / "__init__.py"
    assert Path(seen["root"]).resolve() == site / RESOURCES
    for path in map(Path, seen["files"]):
        assert path.resolve().is_relative_to(site / RESOURCES) and path.is_file(), path
    assert not [p for p in seen["path"] if p and Path(p).resolve().is_relative_to(ROOT)]
    assert not seen["tests"], "the test helpers of the checkout are importable in the venv"


def test_the_installed_cli_runs_a_search_with_the_packaged_prompts(installed, fake_ollama,
                                                                   fashion_data_dir):
    generated = [(replies.VALID_NET, fc.OK), (replies.SHAPE_MISMATCH_NET, fc.SHAPE_ERROR)]
    server = fake_ollama(default=by_role([code for code, _ in generated], DIAGNOSIS))
    results = installed.work / "results"
    scratch = installed.work / "scratch"
    scratch.mkdir()
    proc = subprocess.run(
        [str(installed.cli), "run",
         *run_args(server, fashion_data_dir, results, "wheel", len(generated))],
        capture_output=True, text=True, cwd=installed.work, timeout=900,
        env=clean_env(installed.venv, TMPDIR=str(scratch)))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    records = read_records(results / "wheel")
    assert [r["status"] for r in records] == [status for _, status in generated], output
    assert any(r["status"] == fc.OK for r in records)

    templates = {p.stem: p.read_text() for p in (installed.resources / "prompts").glob("*.txt")}
    chats = server.chat_requests()
    roles = {"generator": [b for b in chats if not b.get("format")],
             "improver": [b for b in chats if b.get("format")]}
    assert [len(roles["generator"]), len(roles["improver"])] == [2, 2]
    for role, bodies in roles.items():
        fixed = [line for line in templates[role].splitlines() if line and "$" not in line]
        assert fixed, role
        for body in bodies:
            assert body["messages"][0] == {"role": "system",
                                           "content": templates[f"{role}_system"].strip()}
            prompt = user_message(body)
            assert all(line in prompt for line in fixed), (role, prompt)


@pytest.mark.docker
def test_the_installed_cli_builds_the_sandbox_image_from_its_packaged_sources(installed):
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: no engine here
        pytest.skip(f"NOT TESTED: `orchestrator sandbox build` from the installed wheel: no Docker "
                    f"engine reachable ({type(exc).__name__}: {exc})")
    from orchestrator.sandbox.image import IMAGE, LABEL_DOCKERFILE, LABEL_RUNNER, ensure_image

    # As the other Docker tests: the offline base (and the image) exist first, so the CLI's
    # build below is quick; it still reads the packaged runner.py and Dockerfile to decide.
    ensure_image(client, offline=True, progress=False)
    proc = subprocess.run([str(installed.cli), "sandbox", "build", "--offline"],
                          capture_output=True, text=True, cwd=installed.work, timeout=1800,
                          env=clean_env(installed.venv))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "sandbox image ready" in output, output
    labels = client.images.get(IMAGE).labels or {}
    assert labels.get(LABEL_RUNNER) == sha256(installed.resources / "sandbox-image" / "runner.py")
    assert labels.get(LABEL_DOCKERFILE) == sha256(installed.resources / "Dockerfile.sandbox")
