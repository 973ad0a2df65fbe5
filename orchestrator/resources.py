"""Where the files beside the code live: the prompt templates and the sandbox image's sources.

They sit at the repository's top level (`prompts/`, `sandbox-image/`, `Dockerfile.sandbox`); a
wheel carries them inside the package under `_resources/` (pyproject.toml, `force-include`).
A source checkout or an editable install finds them at the top level, an installed wheel in
the package."""

from __future__ import annotations

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "_resources"
ROOT = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[1]

PROMPTS_DIR = ROOT / "prompts"
RUNNER_PATH = ROOT / "sandbox-image" / "runner.py"
OFFLINE_BASE_SCRIPT = ROOT / "sandbox-image" / "offline-base.sh"
DOCKERFILE = ROOT / "Dockerfile.sandbox"
