"""The Docker engine: connecting to it, and checking it can run the sandbox as asked."""

from __future__ import annotations

import os

import docker
import docker.errors
import docker.types
import requests


class SandboxUnavailable(RuntimeError):
    """The Docker sandbox cannot be used here; the message says how to fix it."""


def docker_url() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def _chain_text(exc: BaseException) -> str:
    parts, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return " | ".join(parts)


def connect(timeout: int = 120) -> docker.DockerClient:
    """A client for the engine in the environment (DOCKER_HOST or the default socket)."""
    url = docker_url()
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
        if "Permission denied" in _chain_text(e) or isinstance(e, PermissionError):
            raise SandboxUnavailable(
                f"Permission denied on the Docker socket at {url}: add your user to the docker "
                "group: `sudo usermod -aG docker $USER`, then log in again."
            ) from e
        raise SandboxUnavailable(
            f"Cannot reach the Docker engine at {url}: start it (`sudo systemctl start docker`) "
            "or use --sandbox local."
        ) from e


def check_engine(
    client: docker.DockerClient | None = None, gpus: str = "auto", runtime: str | None = None
) -> dict:
    """Check the engine can run the sandbox as asked; its `info()` plus the resolved `gpus`.

    Raises SandboxUnavailable with the fix when it cannot.
    """
    client = client or connect()
    try:
        info = client.info()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise SandboxUnavailable(
            f"Cannot reach the Docker engine at {docker_url()}: start it "
            "(`sudo systemctl start docker`) or use --sandbox local."
        ) from e
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    if runtime and runtime not in runtimes:
        raise SandboxUnavailable(
            f"runtime {runtime} is not registered in the daemon (it has: {', '.join(runtimes)}): "
            f"add it under \"runtimes\" in /etc/docker/daemon.json and restart dockerd, or drop "
            "--runtime."
        )
    has_nvidia = "nvidia" in runtimes
    wanted = (gpus or "auto").strip().lower()
    if wanted == "auto":
        wanted = "all" if has_nvidia else "none"
    elif wanted != "none" and not has_nvidia:
        raise SandboxUnavailable(
            f"GPUs were requested (--gpus {gpus}) but the Docker engine has no NVIDIA runtime: "
            "install the NVIDIA Container Toolkit, or pass --gpus none."
        )
    return dict(info, resolved_gpus=wanted)


def device_requests(gpus: str) -> list[docker.types.DeviceRequest]:
    """'none' -> [], 'all' -> every GPU, '0,1' -> those GPUs."""
    if gpus == "none":
        return []
    if gpus == "all":
        return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    return [docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]
