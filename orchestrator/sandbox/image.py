"""The sandbox image: build it (from the PyTorch base or an offline one) and tell when it is stale.

The image is `Dockerfile.sandbox` with `sandbox-image/runner.py` copied in. It carries the
sha256 of runner.py and of the Dockerfile as labels, so the host rebuilds it when either changed.

    ensure_image(client, offline=False)  # base: the Dockerfile's BASE_IMAGE (needs a registry)
    ensure_image(client, offline=True)   # base: orchestrator-base:offline, built if missing by
                                         # sandbox-image/offline-base.sh (debootstrap + wheels)
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tarfile
import time
from collections import deque
from pathlib import Path

import docker
import docker.errors
from rich.console import Console
from rich.text import Text

from orchestrator.resources import DOCKERFILE, OFFLINE_BASE_SCRIPT, RUNNER_PATH
from orchestrator.store.files import sha256_file

IMAGE = "orchestrator-sandbox:latest"
OFFLINE_BASE = "orchestrator-base:offline"
DEFAULT_CACHE = Path(
    os.environ.get("ORCHESTRATOR_SANDBOX_CACHE", "~/.cache/orchestrator/sandbox-build")
).expanduser()

LABEL_RUNNER = "org.orchestrator.runner-sha256"
LABEL_DOCKERFILE = "org.orchestrator.dockerfile-sha256"
LABEL_BASE = "org.orchestrator.base-image"


class ImageBuildError(RuntimeError):
    """Building the sandbox image (or its offline base) failed."""


def expected_labels() -> dict[str, str]:
    """The labels an up-to-date image carries."""
    return {LABEL_RUNNER: sha256_file(RUNNER_PATH), LABEL_DOCKERFILE: sha256_file(DOCKERFILE)}


def _get(client: docker.DockerClient, name: str):
    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def image_id(client: docker.DockerClient, image: str = IMAGE) -> str | None:
    """The local image's id ("sha256:..."), or None if it is not there."""
    img = _get(client, image)
    return img.id if img is not None else None


def is_stale(client: docker.DockerClient, image: str = IMAGE) -> bool:
    """True when the image is missing or was built from another runner.py or Dockerfile."""
    img = _get(client, image)
    if img is None:
        return True
    labels = img.labels or {}
    return any(labels.get(k) != v for k, v in expected_labels().items())


def build_offline_base(
    cache_dir: Path | None = None, tag: str = OFFLINE_BASE, progress: bool = True,
    force: bool = False,
) -> None:
    """Build `tag` with sandbox-image/offline-base.sh (root, debootstrap, a Debian mirror and
    PyPI or pip find-links needed; no container registry). Cached steps are reused."""
    env = dict(os.environ, TAG=tag, FORCE="1" if force else "0")
    cmd = ["bash", str(OFFLINE_BASE_SCRIPT), str(Path(cache_dir or DEFAULT_CACHE))]
    console = Console(stderr=True)
    tail: deque[str] = deque(maxlen=30)
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            if progress and line.startswith("[offline-base]"):
                console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        code = proc.wait()
    if code != 0:
        raise ImageBuildError(
            f"building {tag} failed (exit {code}):\n" + "\n".join(tail)
        )


def _context(base_image: str | None) -> tuple[io.BytesIO, dict[str, str]]:
    """A minimal build context (Dockerfile + runner.py) and the build args."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, arcname in (
            (DOCKERFILE, "Dockerfile.sandbox"),
            (RUNNER_PATH, "sandbox-image/runner.py"),
        ):
            data = path.read_bytes()
            info = tarfile.TarInfo(arcname)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    labels = expected_labels()
    args = {"RUNNER_SHA256": labels[LABEL_RUNNER], "DOCKERFILE_SHA256": labels[LABEL_DOCKERFILE]}
    if base_image:
        args["BASE_IMAGE"] = base_image
    return buf, args


def build_image(
    client: docker.DockerClient, base_image: str | None = None, image: str = IMAGE,
    progress: bool = True,
) -> str:
    """Build the sandbox image now (base: the Dockerfile's default unless given); its id."""
    context, buildargs = _context(base_image)
    console = Console(stderr=True)
    tail: deque[str] = deque(maxlen=30)
    built: str | None = None
    start = time.perf_counter()
    status = console.status(f"building {image}", spinner="dots") if progress else None
    if status is not None:
        status.start()
    try:
        stream = client.api.build(
            fileobj=context, custom_context=True, dockerfile="Dockerfile.sandbox", tag=image,
            buildargs=buildargs, rm=True, forcerm=True, pull=False, decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                raise ImageBuildError(
                    f"building {image} failed: {detail.strip()}\n" + "\n".join(tail)
                )
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                built = chunk["aux"]["ID"]
            text = (chunk.get("stream") or chunk.get("status") or "").strip()
            if not text:
                continue
            tail.append(text)
            if status is not None:
                if text.startswith("Step "):
                    console.print(Text(" ".join(text.split()), style="dim"), soft_wrap=True)
                status.update(Text(f"building {image}: {' '.join(text.split())[:80]}"))
    except docker.errors.APIError as e:
        raise ImageBuildError(f"building {image} failed: {e.explanation or e}") from e
    finally:
        if status is not None:
            status.stop()
    built = built or image_id(client, image)
    if built is None:
        raise ImageBuildError(f"building {image} produced no image:\n" + "\n".join(tail))
    if progress:
        console.print(f"built {image} ({built[:19]}) in {time.perf_counter() - start:.1f}s")
    return built


def ensure_image(
    client: docker.DockerClient, offline: bool, progress: bool = True, rebuild: bool = False,
    image: str = IMAGE, cache_dir: Path | None = None,
) -> str:
    """The sandbox image's id, building it first when missing, stale or `rebuild` is set.

    offline=True builds on orchestrator-base:offline (built first if missing) instead of the
    Dockerfile's registry base, so no registry is needed.
    """
    if not rebuild and not is_stale(client, image):
        return image_id(client, image)  # type: ignore[return-value]
    base = None
    if offline:
        base = OFFLINE_BASE
        if _get(client, OFFLINE_BASE) is None:
            build_offline_base(cache_dir, progress=progress)
    old = image_id(client, image)
    new = build_image(client, base_image=base, image=image, progress=progress)
    if old and old != new:  # the superseded image, unless a container still uses it
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(old, noprune=False)
    return new
