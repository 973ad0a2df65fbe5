"""Containers whose host died: recognised by the labels naming their creator, then removed.

Every sandbox container carries labels naming the process that created it (pid, its start
time, the host boot and PID namespace). A later run removes the containers whose creator is
gone, and their host job and output folders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import docker
import docker.errors
import docker.models.containers

LABEL = "org.orchestrator.sandbox"  # "1" on every container a DockerSandbox creates
LABEL_PID = "org.orchestrator.host-pid"  # the creating process
LABEL_PIDNS = "org.orchestrator.host-pidns"  # ... its host boot and PID namespace
LABEL_STARTED = "org.orchestrator.host-started"  # ... its start time (PID reuse)
LABEL_INSTANCE = "org.orchestrator.sandbox-instance"  # the creating DockerSandbox
OUTPUT_FILES = ("result.json", "predictions.npy")  # the container's only writable host files
FOLDER_PREFIXES = ("orchestrator-job-", "orchestrator-out-")  # its host folders, in the temp dir


def process_labels() -> dict[str, str]:
    """The labels naming this process as a container's creator."""
    return {LABEL_PID: str(os.getpid()), LABEL_PIDNS: _pid_namespace(),
            LABEL_STARTED: _started(os.getpid()) or ""}


def _pid_namespace() -> str:
    """Where a pid names a process: this boot of this host, and this PID namespace."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot}/{os.readlink('/proc/self/ns/pid')}"


def _started(pid: int | str) -> str | None:
    """Start time of process `pid` in clock ticks after boot; None when there is no such
    process, "" when it exists but cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22


def remove_orphans(client: docker.DockerClient) -> int:
    """Force-remove sandbox containers whose creating process is gone (e.g. SIGKILLed), and
    their host job and output folders, judged only for creators on this host, boot and PID
    namespace; how many containers."""
    namespace = _pid_namespace()
    n = 0
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
        labels = c.labels or {}
        pid, started = labels.get(LABEL_PID, ""), labels.get(LABEL_STARTED, "")
        if not pid.isdigit() or labels.get(LABEL_PIDNS, namespace) != namespace:
            continue
        now = _started(pid)
        if now is None or (started and now and now != started):  # gone, or the pid reused
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                folders = _host_folders(c)
                c.remove(force=True)
                n += 1
                for folder in folders:
                    shutil.rmtree(folder, ignore_errors=True)
    return n


def _host_folders(container: docker.models.containers.Container) -> set[Path]:
    """The host folders a sandbox container was given (/job, and the one holding the /out
    files), recognised by their FOLDER_PREFIXES."""
    folders = set()
    for mount in container.attrs.get("Mounts") or []:
        source, target = Path(mount.get("Source") or "/"), mount.get("Destination", "")
        folder = source if target == "/job" else source.parent
        if target in ("/job", *(f"/out/{name}" for name in OUTPUT_FILES)) and \
                folder.name.startswith(FOLDER_PREFIXES):
            folders.add(folder)
    return folders
