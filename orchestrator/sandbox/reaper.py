"""Supervisor for the local sandbox: `python reaper.py STATUS_FILE MEMORY_BYTES HOST_PID -- CMD`.

Standard library only. It becomes a child subreaper, so every process the candidate starts,
even one that detached into its own session, stays its descendant; it watches their total
resident memory, and when the runner ends or SIGTERM arrives it kills and reaps them all.
It writes {"exit_code", "oom"} to STATUS_FILE and exits with the runner's code. If the host
dies (even by SIGKILL), the kernel sends it SIGTERM and it also removes the sandbox's folder.
If the reaper itself dies, even by SIGKILL (with its host, as when a node goes), the kernel
kills the runner: a warm runner never outlives its supervisor, holding memory and GPU for nobody.
"""

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MEMORY_POLL_SECONDS = 0.1  # how often the tree's resident memory is measured
PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    """The children of `pid`, from /proc/PID/task/*/children (no scan of every process)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def descendants(root: int) -> list[int]:
    found, stack = [], [root]
    while stack:
        for child in children(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


def resident_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def kill_all() -> None:
    """SIGKILL every descendant and reap until none is left."""
    while True:
        pids = descendants(os.getpid())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reap()
        if not pids:
            return


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def orphaned(status_file: str) -> int:
    """The host is gone and nobody will collect the result: remove the sandbox's folder.

    (The death signal follows the host thread that started us: the warm pool's thread, or the
    chain's without a pool; each outlives the sandboxes it starts.)"""
    shutil.rmtree(os.path.dirname(os.path.abspath(status_file)), ignore_errors=True)
    return 1


def die_with_me(libc: ctypes.CDLL) -> Callable[[], None]:
    """Popen's preexec_fn: the child is SIGKILLed when this process dies. Armed between fork and
    exec, so the runner is covered from its first instruction to its last; the death signal
    follows the thread that forked it, this process's only one."""
    supervisor = os.getpid()

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != supervisor:  # it died before the signal was armed
            os._exit(1)

    return arm


def main() -> int:
    status_file, memory, host = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    command = sys.argv[sys.argv.index("--") + 1 :]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append("term"))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != host:  # the host died before the death signal was armed
        return orphaned(status_file)
    runner = subprocess.Popen(command, preexec_fn=die_with_me(libc))
    exited = os.pidfd_open(runner.pid)  # readable as soon as the runner exits
    oom = False
    while runner.poll() is None and not stop:
        if memory and resident_bytes(descendants(os.getpid())) > memory:
            oom = True
            break
        select.select([exited], [], [], MEMORY_POLL_SECONDS)
    os.close(exited)
    kill_all()  # reaps the runner too when it was still running
    code = runner.returncode if runner.returncode is not None else -signal.SIGKILL
    if os.getppid() != host:
        return orphaned(status_file)
    with open(status_file, "w") as f:
        json.dump({"exit_code": code, "oom": oom, "stopped": bool(stop)}, f)
    return 0 if code is None else (code if code >= 0 else 128 - code)


if __name__ == "__main__":
    sys.exit(main())
