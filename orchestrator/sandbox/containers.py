"""The host's side of one sandbox container: its slot (host folders, container, lifeline), the
thread that follows its output, and the registry that removes every container and folder of a
DockerSandbox (`orchestrator.sandbox.docker`) after its run, at close() or at exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import docker.models.containers

from orchestrator.sandbox.base import LOG_TAIL_CHARS
from orchestrator.sandbox.orphans import LABEL_INSTANCE
from orchestrator.sandbox.pool import Footprint

TAIL_BYTES = 4 * LOG_TAIL_CHARS


class LogPump(threading.Thread):
    """Follows a container's stdout+stderr: byte count, tail, READY line, output cap."""

    def __init__(self, container, cap: int) -> None:
        super().__init__(daemon=True, name=f"sandbox-logs-{container.short_id}")
        self.container, self.cap = container, cap
        self.total = 0
        self.over_limit = False
        self.ready = threading.Event()
        self.wake = threading.Event()  # READY seen, or the stream ended
        self.ready_at: float | None = None
        self.footprint = Footprint()
        self._tail = bytearray()
        self._line = bytearray()
        self._stream = None
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            self._stream = self.container.logs(stream=True, follow=True)
            for chunk in self._stream:
                with self._lock:
                    self.total += len(chunk)
                    self._tail += chunk
                    del self._tail[:-TAIL_BYTES]
                if not self.ready.is_set():
                    self._scan_ready(chunk)
                if self.total > self.cap:
                    self.over_limit = True
                    with contextlib.suppress(Exception):
                        self.container.kill()
                    break
        except Exception:  # the container went away, or the engine did
            pass
        finally:
            self.close()
            self.wake.set()

    def _scan_ready(self, chunk: bytes) -> None:
        self._line += chunk
        *lines, rest = bytes(self._line).split(b"\n")
        self._line = bytearray(rest[-256:])
        ready = [line for line in lines if line.startswith(b"READY")]
        if ready:
            self.ready_at = time.perf_counter()
            self.footprint = Footprint.parse(ready[0])
            self.ready.set()
            self.wake.set()

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def tail(self) -> str:
        with self._lock:
            data = bytes(self._tail)
        return data.decode("utf-8", "replace")[-LOG_TAIL_CHARS:]


@dataclass
class Slot:
    """One container with its host directories."""

    job_dir: Path | None = None
    out_dir: Path | None = None
    container: object | None = None
    pump: LogPump | None = None
    started_at: float = 0.0
    started_wall: float = 0.0  # time.time() at start, for the engine's event log
    error: str | None = None
    timings: dict = field(default_factory=dict)
    lifeline: socket.SocketIO | None = None  # the container's stdin, open while we live


def attach_lifeline(container: docker.models.containers.Container) -> socket.SocketIO:
    """Attach to the (not yet started) container's stdin and keep the socket. The runner
    (--lifeline) exits when its stdin closes: when we close this socket, or when the kernel does
    because this process died, so a SIGKILLed host leaves no container holding its GPU."""
    return container.attach_socket(params={"stdin": 1, "stream": 1})


def cut_lifeline(lifeline: socket.SocketIO) -> None:
    """Close the attached socket itself (SocketIO.close() alone leaves it open)."""
    sock = getattr(lifeline, "_sock", None)
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        lifeline.close()


class Registry:
    """The containers and directories of one DockerSandbox; cleaned at close() or exit."""

    def __init__(self, client: docker.DockerClient, instance: str) -> None:
        self.client, self.instance = client, instance
        self.lock = threading.Lock()
        self.slots: dict[int, Slot] = {}
        self.closed = False

    def add(self, slot: Slot) -> bool:
        with self.lock:
            if self.closed:
                return False
            self.slots[id(slot)] = slot
            return True

    def destroy(self, slot: Slot) -> None:
        with self.lock:
            self.slots.pop(id(slot), None)
        if slot.lifeline is not None:  # first: the runner then exits even if removal fails
            cut_lifeline(slot.lifeline)
        if slot.container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                try:
                    slot.container.remove(force=True)
                except docker.errors.APIError as e:
                    if e.status_code != 409:  # 409: removal already in progress
                        raise
        if slot.pump is not None:
            slot.pump.close()
        for d in (slot.job_dir, slot.out_dir):
            if d is not None:  # host-owned; the container could only write into two files
                shutil.rmtree(d, ignore_errors=True)

    def cleanup(self) -> None:
        with self.lock:
            self.closed = True
            slots = list(self.slots.values())
        for slot in slots:
            with contextlib.suppress(Exception):
                self.destroy(slot)
        with contextlib.suppress(Exception):  # anything created but not yet recorded
            for c in self.client.containers.list(
                all=True, filters={"label": f"{LABEL_INSTANCE}={self.instance}"}
            ):
                with contextlib.suppress(Exception):
                    c.remove(force=True)


def output_file(path: Path) -> Path:
    """An empty file the container's uid may write (not replace: it is a bind mount)."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.chmod(path, 0o666)  # owned by the host user; uid 10001 writes it as "other"
    return path
