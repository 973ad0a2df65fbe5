"""The Docker sandbox against hostile candidates, under runc and gVisor (runsc). Real engine.

Every hostile case asserts the outcome (Execution fields, and the class the host's evaluation
derives from them) and that nothing escaped: no connection reached the host's listeners, the host
canary (a file in the host's tmp dir and an environment variable of this process) appears nowhere
in what came back, host files are unchanged, the container and its host directories are gone, and
no process the candidate spawned survives on the host. Each candidate prints one `REPORT {json}`
line saying what its attack achieved, which doubles as a positive control that the attack ran.

The image is built offline on first use (minutes: debootstrap + wheels + docker import, see
sandbox-image/offline-base.sh); later runs reuse it and its cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

docker = pytest.importorskip("docker")

from orchestrator import outcomes as fc  # noqa: E402
from orchestrator.resources import RUNNER_PATH  # noqa: E402
from orchestrator.sandbox.base import Limits  # noqa: E402
from orchestrator.sandbox.docker import FSIZE_LIMIT, GVISOR_PIDS_EXTRA, DockerSandbox  # noqa: E402
from orchestrator.sandbox.engine import SandboxUnavailable, check_engine, connect  # noqa: E402
from orchestrator.sandbox.image import IMAGE, ensure_image  # noqa: E402
from orchestrator.sandbox.orphans import (  # noqa: E402
    LABEL,
    LABEL_PID,
    LABEL_PIDNS,
    LABEL_STARTED,
    process_labels,
    remove_orphans,
)
from orchestrator.sandbox.pool import PoolSize  # noqa: E402
from orchestrator.search.evaluation import score  # noqa: E402
from tests.helpers import tiny_job, write_tiny_cache  # noqa: E402


def _engine_or_reason():
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client, None
    except Exception as e:
        return None, f"no Docker engine reachable ({type(e).__name__}: {e})"


CLIENT, _REASON = _engine_or_reason()
if CLIENT is None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.docker

RUNTIMES = ["runc", "runsc"]
LIMITS = dict(timeout=20.0, memory="512m", output_bytes=256 << 10, pids=64, tmpfs="64m")
SHORT_TIMEOUT = 5.0  # for the cases that must be killed at the timeout
TOKEN = "4242.4242"  # in the command line of every process a candidate leaves behind
CANARY_ENV = "ORCHESTRATOR_SANDBOX_CANARY"
JOB = tiny_job(batch_size=64)


# ------------------------------------------------------------------------ candidates

NET = '''\
import json as _json
import os as _os
import sys as _sys

import torch
import torch.nn as nn

_DONE = False


def report(**fields):
    print("REPORT " + _json.dumps(fields, default=str), flush=True)


def attempt(fn):
    try:
        value = fn()
        return "ok" if value is None else value
    except BaseException as e:
        return "denied: " + type(e).__name__


{prelude}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
{init}

    def forward(self, x):
        global _DONE
        first, _DONE = not _DONE, True
{forward}
        return self.body(x)
'''


def candidate(prelude: str = "", init: str = "", forward: str = "") -> str:
    """A valid Net with attack code at module import, in __init__ or in forward (first call:
    `first` is True)."""
    return NET.format(
        prelude=textwrap.dedent(prelude).strip(),
        init=textwrap.indent(textwrap.dedent(init).strip(), " " * 8),
        forward=textwrap.indent(textwrap.dedent(forward).strip(), " " * 8),
    )


VALID = candidate()


def report(ex) -> dict:
    lines = [ln for ln in ex.log_tail.splitlines() if ln.startswith("REPORT ")]
    assert lines, f"the candidate printed no REPORT:\n{ex.log_tail}"
    return json.loads(lines[-1][len("REPORT "):])


# ------------------------------------------------------------------------ host-side fixtures


def host_processes_with(token: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if token in cmd:
                    found.append(f"{pid}: {cmd}")
    return found


def my_containers() -> list:
    return CLIENT.containers.list(all=True, filters={"label": [f"{LABEL}=1",
                                                               f"{LABEL_PID}={os.getpid()}"]})


def host_dirs() -> set[Path]:
    tmp = Path(tempfile.gettempdir())
    return {*tmp.glob("orchestrator-out-*"), *tmp.glob("orchestrator-job-*")}


@pytest.fixture(scope="session")
def suite_guard():
    """After the whole module: no sandbox container of this process, no leftover process,
    no host job or output directory left behind."""
    before = host_dirs()
    yield
    assert my_containers() == []
    assert host_processes_with(TOKEN) == []
    assert host_dirs() - before == set()


@pytest.fixture(scope="session")
def image(suite_guard) -> str:
    return ensure_image(CLIENT, offline=True, progress=True)


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    sandbox_dir = write_tiny_cache(tmp_path_factory.mktemp("docker-data") / "tiny", 256, 128)
    return sandbox_dir


@pytest.fixture(scope="session")
def labels(data) -> np.ndarray:
    return np.load(data.parent / "labels" / "test_y.npy")


def digest(*paths: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="session")
def canary():
    """A secret in a world-readable host file and in this process's environment."""
    secret = f"canary-{uuid.uuid4().hex}"
    path = Path(tempfile.gettempdir()) / f"orchestrator-canary-{uuid.uuid4().hex[:8]}.txt"
    path.write_text(secret)
    path.chmod(0o644)
    old = os.environ.get(CANARY_ENV)
    os.environ[CANARY_ENV] = secret
    yield secret, path
    path.unlink()
    if old is None:
        os.environ.pop(CANARY_ENV, None)
    else:
        os.environ[CANARY_ENV] = old


def bridge_gateway() -> str | None:
    """The host's address on the default docker bridge (docker0), e.g. 172.17.0.1."""
    try:
        config = CLIENT.networks.get("bridge").attrs["IPAM"]["Config"][0]
    except Exception:
        return None
    if config.get("Gateway"):
        return config["Gateway"]
    # The default bridge often reports only its subnet; docker gives the host its first address.
    return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


class Listeners:
    """TCP and UDP sockets on 127.0.0.1 and the docker bridge gateway; nothing may reach them."""

    def __init__(self) -> None:
        self.addresses = ["127.0.0.1"] + ([gw] if (gw := bridge_gateway()) else [])
        self.tcp, self.udp = [], []
        for addr in self.addresses:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.bind((addr, 0))
            t.listen(16)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((addr, t.getsockname()[1]))
            self.tcp.append(t)
            self.udp.append(u)

    @property
    def targets(self) -> list[tuple[str, int]]:
        return [s.getsockname() for s in self.tcp]

    def received(self) -> list[str]:
        """What arrived (non-blocking: a completed connection or datagram is already queued)."""
        got = []
        readable, _, _ = select.select(self.tcp + self.udp, [], [], 0)
        for s in readable:
            if s.type == socket.SOCK_STREAM:
                conn, peer = s.accept()
                got.append(f"tcp connection from {peer}")
                conn.close()
            else:
                data, peer = s.recvfrom(65536)
                got.append(f"udp {data[:50]!r} from {peer}")
        return got

    def close(self) -> None:
        for s in self.tcp + self.udp:
            s.close()


@pytest.fixture(scope="session")
def listeners():
    ls = Listeners()
    yield ls
    ls.close()


@pytest.fixture(scope="session", params=RUNTIMES)
def runtime(request) -> str:
    name = request.param
    if name != "runc":
        runtimes = CLIENT.info().get("Runtimes") or {}
        if name not in runtimes:
            pytest.skip(f"runtime {name} is not registered in the Docker daemon "
                        f"(has: {', '.join(sorted(runtimes))})")
    return name


@pytest.fixture(scope="session")
def sandbox(runtime, image, data, suite_guard):
    """One pre-warming sandbox per runtime, shared by the hostile cases (one warm container:
    back to back, an auto-sized pool would grow to eight on this small machine)."""
    sb = DockerSandbox(data, Limits(**LIMITS), device="cpu", gpus="none", runtime=runtime,
                       image=IMAGE, pool=PoolSize(depth=1))
    yield sb
    sb.close()
    left = CLIENT.containers.list(
        all=True, filters={"label": f"org.orchestrator.sandbox-instance={sb._instance}"})
    assert left == []


@contextlib.contextmanager
def timeout(sb: DockerSandbox, seconds: float):
    """limits.timeout is read at each run(); the other limits at container creation."""
    old = sb.limits.timeout
    sb.limits.timeout = seconds
    try:
        yield
    finally:
        sb.limits.timeout = old


@pytest.fixture
def run(request, sandbox, data, labels, listeners, canary):
    """Run a candidate in the shared sandbox, then check nothing escaped; returns
    (execution, outcome class from the host's evaluation)."""
    protected = [*sorted(data.iterdir()), data.parent / "labels" / "test_y.npy", RUNNER_PATH]
    before = digest(*protected)
    secret, _ = canary

    def go(code: str):
        ex = sandbox.run(code, JOB)
        outcome = score(ex, labels, 10)
        # nothing escaped
        assert listeners.received() == []
        assert digest(*protected) == before, "a host file changed"
        for blob in (ex.log_tail.encode(), ex.result_bytes or b"", ex.predictions_bytes or b""):
            assert secret.encode() not in blob
        assert ex.sandbox_error is None, ex.sandbox_error
        cid = ex.info.get("container_id")
        assert cid
        with pytest.raises(docker.errors.NotFound):
            CLIENT.containers.get(cid)
        assert not Path(ex.info["host_out_dir"]).exists()
        assert host_processes_with(TOKEN) == []
        print(f"OUTCOME {request.node.name}: exit={ex.exit_code} killed={ex.killed} "
              f"class={outcome.status} seconds={ex.seconds}")  # shown with -s
        return ex, outcome.status

    return go


# ------------------------------------------------------------------------ control cases


def test_valid_candidate_is_ok_and_scored_on_the_host(run, labels):
    ex, status = run(VALID)
    assert status == fc.OK, ex.log_tail
    assert ex.exit_code == 0 and ex.killed is None
    preds = np.load(io.BytesIO(ex.predictions_bytes))
    assert preds.shape == labels.shape
    assert {"create_s", "start_s", "ready_wait_s", "teardown_s"} <= set(ex.info)


def test_listeners_are_reachable_from_a_networked_container(listeners, image, runtime):
    """Positive control for the egress checks: with a network the listeners do receive."""
    if runtime != "runc":
        pytest.skip("control needs a bridge network; runsc is registered with --network=none")
    gw = [t for t in listeners.targets if t[0] != "127.0.0.1"]
    if not gw:
        pytest.skip("no docker bridge gateway")
    host, port = gw[0]
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=10).close()"
    CLIENT.containers.run(IMAGE, entrypoint=["python3", "-c", code],
                          network_mode="bridge", remove=True, labels={LABEL: "1"})
    assert any("tcp" in r for r in listeners.received())


# ------------------------------------------------------------------------ hostile cases


def test_network_egress_fails(run, listeners):
    targets = listeners.targets
    code = candidate(init=f"""
        import socket
        results = {{}}
        for host, port in {targets!r}:
            results[f"tcp {{host}}"] = attempt(
                lambda: socket.create_connection((host, port), timeout=3).close())
            def udp():
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.sendto(b"leak", (host, port))
                s.close()
            results[f"udp {{host}}"] = attempt(udp)
        results["dns"] = attempt(lambda: socket.getaddrinfo("pypi.org", 443))
        results["docker.sock"] = attempt(lambda: socket.socket(socket.AF_UNIX).connect(
            "/var/run/docker.sock"))
        results["interfaces"] = attempt(lambda: sorted(n for _, n in socket.if_nameindex()))
        report(**results)
    """)
    ex, status = run(code)
    r = report(ex)
    assert status == fc.OK, ex.log_tail
    for key, value in r.items():
        # A datagram to 127.0.0.1 goes to the container's own loopback: "sent", to no one.
        if key not in ("interfaces", "udp 127.0.0.1"):
            assert str(value).startswith("denied"), (key, value)
    assert r["interfaces"] in (["lo"], []) or str(r["interfaces"]).startswith("denied")


def test_host_files_and_environment_are_not_readable(run, canary):
    secret, path = canary
    code = candidate(prelude=f"""
        found = {{}}
        found["host file"] = attempt(lambda: open({str(path)!r}).read())
        found["env var"] = _os.environ.get({CANARY_ENV!r}, "absent")
        found["proc1 environ"] = attempt(lambda: open("/proc/1/environ", "rb").read().decode(
            errors="replace"))
        found["self environ"] = attempt(lambda: open("/proc/self/environ", "rb").read().decode(
            errors="replace"))
        found["shadow"] = attempt(lambda: open("/etc/shadow").read())
        found["host root"] = attempt(lambda: _os.listdir("/root"))
        found["tmp"] = attempt(lambda: _os.listdir("/tmp"))
        blob = _json.dumps(found)
        open("/out/result.json", "w").write(blob)
        open("/out/predictions.npy", "w").write(blob)
        report(**found)
        _os._exit(0)
    """)
    ex, status = run(code)
    r = report(ex)
    assert r["host file"].startswith("denied: FileNotFoundError")
    assert r["env var"] == "absent"
    assert CANARY_ENV not in r["self environ"]
    assert r["shadow"].startswith("denied")
    assert ex.exit_code == 0 and ex.result_bytes  # it wrote what it found: that came back
    assert status == fc.RUNTIME_ERROR  # a result.json without a runner status is not trusted


def test_writes_outside_the_output_files_fail(run, data):
    targets = ["/evil", "/job/evil", "/job/candidate.py", "/data/evil", "/data/train_x.npy",
               "/opt/sandbox/runner.py", "/opt/sandbox/evil", "/etc/passwd", "/usr/bin/evil",
               "/out/evil", "/tmp/ok", "/dev/shm/ok", "/out/predictions.npy"]
    code = candidate(forward=f"""
        if first:
            def write(p):
                with open(p, "ab") as f:
                    f.write(b"pwned")
            report(**{{p: attempt(lambda p=p: write(p)) for p in {targets!r}}})
    """)
    ex, status = run(code)
    r = report(ex)
    assert status == fc.OK, ex.log_tail
    for p in targets:
        allowed = p in ("/tmp/ok", "/dev/shm/ok", "/out/predictions.npy")
        assert (r[p] == "ok") == allowed, (p, r[p])
    assert not (data / "evil").exists()


def test_fork_bomb_is_contained(run, sandbox):
    code = candidate(prelude=f"""
        forks, error = 0, None
        for _ in range(5000):
            try:
                pid = _os.fork()
            except OSError as e:
                error = repr(e)
                break
            if pid == 0:
                try:
                    _os.execvp("sleep", ["sleep", "{TOKEN}"])
                finally:
                    _os._exit(0)
            forks += 1
        report(forks=forks, error=error)
        raise RuntimeError("fork bomb done")
    """)
    ex, status = run(code)
    if sandbox.runtime == "runsc" and ex.exit_code not in (0, None) and not ex.result_bytes:
        # gVisor: each sandboxed process costs host threads (pids cgroup) and sentry memory;
        # whichever limit trips first ends the whole sandbox. Contained all the same.
        assert status in (fc.RUNTIME_ERROR, fc.OOM), (status, ex.exit_code, ex.killed)
    else:
        r = report(ex)
        assert r["error"] and "Resource temporarily unavailable" in r["error"]
        extra = GVISOR_PIDS_EXTRA if sandbox.runtime == "runsc" else 0
        assert 0 < r["forks"] < LIMITS["pids"] + extra
        assert status == fc.INSTANTIATE_ERROR
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


def test_memory_bomb_is_killed_oom(run):
    code = candidate(forward="""
        blocks = []
        while True:
            blocks.append(b"x" * (64 << 20))
    """)
    ex, status = run(code)
    assert ex.killed == "oom" and ex.exit_code == 137, (ex.killed, ex.exit_code, ex.log_tail)
    assert status == fc.OOM



def test_a_candidate_that_sigkills_itself_is_a_runtime_error_not_oom(run):
    """Exit 137 alone is no OOM: without the engine's OOM event it stays a crash."""
    ex, status = run(candidate(forward="""
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    assert ex.exit_code == 137 and ex.killed is None, (ex.exit_code, ex.killed, ex.log_tail)
    assert status == fc.RUNTIME_ERROR

BOMB = candidate(forward="""
    blocks = []
    while True:
        blocks.append(b"x" * (64 << 20))
""")
BOMBS_UNDER_LOAD = 20


@contextlib.contextmanager
def cpu_burners(n: int):
    """`n` host processes spinning at full speed, ended when the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_memory_bombs_on_a_busy_machine_are_all_killed_oom(runtime, image, data, labels):
    """20 memory bombs, four sandboxes at a time (as four chains would), while CPU burners keep
    every core busy: each one is classified oom. The engine may record a container's OOM after
    its exit under load; one read of State.OOMKilled right after the exit called some of them
    runtime errors."""
    limits = Limits(**{**LIMITS, "timeout": 180.0})  # cold starts on a busy machine are slow
    sandboxes = [DockerSandbox(data, limits, device="cpu", gpus="none",
                               runtime=runtime, image=IMAGE, pool=PoolSize(depth=0))
                 for _ in range(4)]

    def bombs(sb: DockerSandbox) -> list[tuple]:
        return [(ex.killed, ex.exit_code, score(ex, labels, 10).status)
                for ex in (sb.run(BOMB, JOB) for _ in range(BOMBS_UNDER_LOAD // 4))]

    try:
        with cpu_burners(os.cpu_count() or 1), ThreadPoolExecutor(4) as pool:
            outcomes = [o for got in pool.map(bombs, sandboxes) for o in got]
    finally:
        for sb in sandboxes:
            sb.close()
    assert len(outcomes) == BOMBS_UNDER_LOAD
    assert [o for o in outcomes if o != ("oom", 137, fc.OOM)] == []


def test_cpu_spin_is_killed_at_the_timeout(run, sandbox):
    with timeout(sandbox, SHORT_TIMEOUT):
        ex, status = run(candidate(init="while True:\n    pass"))
    assert ex.killed == "timeout" and status == fc.TIMEOUT
    assert ex.result_bytes is None


def test_sleeping_forever_is_killed_at_the_timeout(run, sandbox):
    code = candidate(forward="""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("SLEEPING", flush=True)
        time.sleep(10 ** 6)
    """)
    with timeout(sandbox, SHORT_TIMEOUT):
        ex, status = run(code)
    assert "SLEEPING" in ex.log_tail
    assert ex.killed == "timeout" and status == fc.TIMEOUT


def test_output_flood_is_killed(run):
    code = candidate(prelude="""
        chunk = "A" * 65536
        while True:
            _sys.stdout.write(chunk)
            _sys.stderr.write(chunk)
    """)
    ex, status = run(code)
    assert ex.killed == "output_limit" and status == fc.OUTPUT_LIMIT
    assert ex.info["output_bytes"] > LIMITS["output_bytes"]
    assert 0 < len(ex.log_tail) <= 4000


def test_forged_result_is_returned_untrusted(run, labels):
    """The container can write anything to /out: the host gets the bytes, nothing more. The
    host's evaluation recomputes accuracy from predictions.npy and the test labels, which the
    container never saw, so a claimed accuracy is ignored."""
    forged = json.dumps({"status": "ok", "phase": "predict", "error": None,
                         "metrics": {"accuracy": 0.99, "params": 1}})
    code = candidate(prelude=f"""
        import numpy as np
        seen = {{p: _os.path.exists(p) for p in ("/data/../labels/test_y.npy",
                 "/labels/test_y.npy", "/labels", "/data/labels", "/out/../labels")}}
        report(data=sorted(_os.listdir("/data")), seen=seen)
        np.save("/out/predictions.npy", np.zeros(128, dtype=np.int64))
        open("/out/result.json", "w").write({forged!r})
        _os._exit(0)
    """)
    ex, status = run(code)
    r = report(ex)
    assert not any(r["seen"].values()), r["seen"]
    assert r["data"] == ["test_x.npy", "train_x.npy", "train_y.npy"]
    assert ex.result_bytes == forged.encode()  # what came back is exactly the forgery
    assert status == fc.OK
    outcome = score(ex, labels, 10)
    assert outcome.accuracy == pytest.approx(float(np.mean(labels == 0)))
    assert outcome.accuracy < 0.5


def test_test_labels_are_nowhere_inside(run, sandbox, data):
    code = candidate(forward="""
        if first:
            hits, files = [], 0
            for root, dirs, names in _os.walk("/"):
                if root == "/":
                    dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
                files += len(names)
                hits += [_os.path.join(root, n) for n in names + dirs if n.startswith("test_y")]
            report(hits=hits, files=files, data=sorted(_os.listdir("/data")))
    """)
    with timeout(sandbox, 120.0):
        ex, status = run(code)
    r = report(ex)
    assert status == fc.OK, ex.log_tail
    assert r["hits"] == [] and r["files"] > 1000  # it did walk the image
    assert r["data"] == ["test_x.npy", "train_x.npy", "train_y.npy"]
    assert (data.parent / "labels" / "test_y.npy").exists()  # they exist, on the host only


def test_validation_labels_are_nowhere_inside(runtime, image, suite_guard, tmp_path):
    """--select-on val: the sandbox of a holdout gets the training set less the validation
    images, and the validation images among the evaluation images, with no label of them."""
    from orchestrator.data import datasets

    tiny = write_tiny_cache(tmp_path / "tiny", 160, 40)
    arrays = tuple(np.load(p) for p in (tiny / "train_x.npy", tiny / "train_y.npy",
                                        tiny / "test_x.npy", tiny.parent / "labels" / "test_y.npy"))
    datasets._write_cache(tmp_path / "data" / "mnist", datasets.SPECS["mnist"], arrays)
    held = datasets.holdout(datasets.load("mnist", tmp_path / "data"), 0.1, 42)
    assert held.val_count == 16
    code = candidate(forward="""
        if first:
            import hashlib
            import numpy as np
            hits, npy, files = [], [], 0
            for root, dirs, names in _os.walk("/"):
                if root == "/":
                    dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
                files += len(names)
                hits += [_os.path.join(root, n) for n in names + dirs
                         if n.startswith(("test_y", "val_y", "labels"))]
                if not root.startswith("/opt/sandbox/site") and "-packages" not in root:
                    npy += [_os.path.join(root, n) for n in names if n.endswith(".npy")]
            report(hits=hits, npy=sorted(npy), files=files, data=sorted(_os.listdir("/data")),
                   train_y=len(np.load("/data/train_y.npy")),
                   digests=[hashlib.md5(r.tobytes()).hexdigest()[:10]
                            for r in np.load("/data/train_x.npy")])
    """)
    sb = DockerSandbox(held.sandbox_dir, Limits(**LIMITS), device="cpu", gpus="none",
                       runtime=runtime, image=IMAGE, pool=PoolSize(depth=0))
    try:
        ex = sb.run(code, JOB)
    finally:
        sb.close()
    outcome = score(ex, held.test_labels(), 10, held.val_count)
    assert ex.sandbox_error is None and outcome.status == fc.OK, ex.log_tail
    r = report(ex)
    assert r["hits"] == [] and r["files"] > 1000  # it did walk the image
    assert r["data"] == ["test_x.npy", "train_x.npy", "train_y.npy"]
    assert r["npy"] == ["/data/test_x.npy", "/data/train_x.npy", "/data/train_y.npy",
                        "/out/predictions.npy"]  # the candidate's own output file
    assert r["train_y"] == 160 - 16 == held.train_count
    val_x = np.load(held.sandbox_dir / "test_x.npy")[:held.val_count]
    held_out = {hashlib.md5(x.tobytes()).hexdigest()[:10] for x in val_x}
    assert len(r["digests"]) == 144 and not held_out & set(r["digests"])
    assert (held.root / "labels" / "test_y.npy").exists()  # they exist, on the host only
    with pytest.raises(docker.errors.NotFound):
        CLIENT.containers.get(ex.info["container_id"])


def test_background_processes_do_not_survive(run):
    code = candidate(init=f"""
        import subprocess
        subprocess.Popen(["sleep", "{TOKEN}"], start_new_session=True)
        if _os.fork() == 0:  # classic double fork
            _os.setsid()
            if _os.fork() == 0:
                _os.execvp("python3", ["python3", "-c", "import time; time.sleep({TOKEN})"])
            _os._exit(0)
        _os.wait()
        report(spawned=True)
    """)
    ex, status = run(code)  # checks: container gone, no host process with TOKEN
    assert report(ex) == {"spawned": True}
    assert status == fc.OK, ex.log_tail


@pytest.mark.parametrize("how", ["abort", "segfault"])
def test_interpreter_crash(run, how):
    crash = "_os.abort()" if how == "abort" else "import ctypes\nctypes.string_at(0)"
    ex, status = run(candidate(forward=crash))
    assert ex.exit_code not in (0, None) and ex.result_bytes is None
    assert ex.killed is None
    assert status == fc.RUNTIME_ERROR


def test_chmod_symlink_and_fifo_tricks(run):
    code = candidate(prelude="""
        import stat
        r = {}
        r["chmod candidate"] = attempt(lambda: _os.chmod("/job/candidate.py", 0o777))
        r["chmod job"] = attempt(lambda: _os.chmod("/job", 0o777))
        r["chmod out"] = attempt(lambda: _os.chmod("/out", 0o000))
        r["chmod result"] = attempt(lambda: _os.chmod("/out/result.json", 0o000))
        r["chmod data"] = attempt(lambda: _os.chmod("/data/train_x.npy", 0o666))
        r["mkdir out"] = attempt(lambda: _os.mkdir("/out/locked"))
        r["remove result"] = attempt(lambda: _os.remove("/out/result.json"))
        r["rename over result"] = attempt(lambda: _os.rename("/tmp", "/out/result.json"))
        r["symlink"] = attempt(lambda: _os.symlink("/job/job.json", "/out/link"))
        r["fifo"] = attempt(lambda: _os.mkfifo("/out/fifo"))
        r["mode candidate"] = oct(stat.S_IMODE(_os.stat("/job/candidate.py").st_mode))
        report(**r)
        _os._exit(3)
    """)
    ex, status = run(code)  # checks the host out dir was removed
    r = report(ex)
    for key in ("chmod candidate", "chmod job", "chmod out", "chmod result", "chmod data",
                "mkdir out", "remove result", "rename over result", "symlink", "fifo"):
        assert r[key].startswith("denied"), (key, r[key])
    assert r["mode candidate"] == "0o644"
    assert ex.exit_code == 3
    assert ex.result_bytes is None and ex.predictions_bytes is None  # nothing was written
    assert status == fc.RUNTIME_ERROR


def test_disk_flood_is_capped_per_file_and_nothing_else_is_writable(run):
    code = candidate(prelude=f"""
        def flood(path):
            chunk = b"\\0" * (1 << 20)
            try:
                with open(path, "wb") as f:
                    for _ in range({FSIZE_LIMIT >> 20} + 64):
                        f.write(chunk)
            except OSError as e:
                return "denied: " + str(e.strerror)
        r = {{"predictions": flood("/out/predictions.npy"), "new file": flood("/out/flood"),
              "size": _os.path.getsize("/out/predictions.npy")}}
        report(**r)
        _os._exit(0)
    """)
    ex, status = run(code)
    r = report(ex)
    assert r["predictions"] == "denied: File too large"
    assert r["new file"].startswith("denied")
    assert r["size"] == FSIZE_LIMIT
    assert ex.predictions_bytes is None  # over the host's read cap: not read at all
    assert status == fc.RUNTIME_ERROR


# ------------------------------------------------------------------------ modes and faults


def test_prewarm_and_cold_start_give_identical_predictions(sandbox, data, image, runtime):
    warm = sandbox.run(VALID, JOB)
    with DockerSandbox(data, Limits(**{**LIMITS, "timeout": 120.0}), device="cpu",
                       gpus="none", runtime=runtime, pool=PoolSize(depth=0)) as cold_box:
        cold = cold_box.run(VALID, JOB)
        assert cold.info["prewarmed"] is False and "ready_wait_s" not in cold.info
    assert warm.info["prewarmed"] is True
    assert warm.exit_code == cold.exit_code == 0
    assert warm.predictions_bytes and warm.predictions_bytes == cold.predictions_bytes


@pytest.mark.parametrize("depth", [None, 0], ids=["pool", "cold"])
def test_missing_image_is_a_sandbox_error(data, depth, suite_guard):
    with DockerSandbox(data, Limits(**LIMITS), device="cpu", gpus="none",
                       image="orchestrator-sandbox:does-not-exist",
                       pool=PoolSize(depth=depth)) as sb:
        ex = sb.run(VALID, JOB)
        assert sb.describe()["image_id"] is None
    assert ex.sandbox_error and "does-not-exist" in ex.sandbox_error
    assert ex.exit_code is None and ex.result_bytes is None


def test_torn_data_is_a_sandbox_error_in_phase_data(data, labels, tmp_path, image, suite_guard):
    """The warm container's runner fails loading the data, before READY: no candidate code
    ran, so the host reports the runner's own fault with its phase."""
    torn = tmp_path / "torn"
    torn.mkdir()
    for path in Path(data).iterdir():
        torn.joinpath(path.name).write_bytes(path.read_bytes())
    images = torn / "train_x.npy"
    images.write_bytes(images.read_bytes()[:1000])
    os.chmod(torn, 0o755)
    with DockerSandbox(torn, Limits(**LIMITS), device="cpu", gpus="none",
                       pool=PoolSize(depth=1)) as sb:
        ex = sb.run(VALID, JOB)
    outcome = score(ex, labels, 10)
    assert (outcome.status, outcome.phase) == (fc.SANDBOX_ERROR, "data"), outcome.error
    assert "warming up" in outcome.error["message"] and "cannot load data" in \
        outcome.error["message"]


def test_missing_data_dir_is_a_sandbox_error(tmp_path, image, suite_guard):
    with DockerSandbox(tmp_path / "nope", Limits(**LIMITS), device="cpu", gpus="none",
                       pool=PoolSize(depth=0)) as sb:
        ex = sb.run(VALID, JOB)
    assert ex.sandbox_error and "does not exist" in ex.sandbox_error


def test_describe(sandbox, image, runtime):
    d = sandbox.describe()
    assert d == {"kind": "docker", "image": IMAGE, "image_id": image,
                 "runtime": runtime, "gpus": "none"}


def test_unknown_runtime_is_refused():
    with pytest.raises(SandboxUnavailable, match="runtime no-such-runtime is not registered"):
        check_engine(CLIENT, "none", "no-such-runtime")


def test_gpus_without_nvidia_runtime_are_refused():
    if "nvidia" in (CLIENT.info().get("Runtimes") or {}):
        pytest.skip("this engine has an NVIDIA runtime")
    with pytest.raises(SandboxUnavailable, match="NVIDIA Container Toolkit"):
        check_engine(CLIENT, "all")
    assert check_engine(CLIENT, "auto")["resolved_gpus"] == "none"


def test_unreachable_engine_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    with pytest.raises(SandboxUnavailable, match="Cannot reach the Docker engine"):
        connect()


def test_no_host_leftovers_after_the_cases(runtime, sandbox):
    """Only the pool's pre-warmed container (one here) may exist between candidates."""
    mine = [c for c in my_containers() if c.labels.get("org.orchestrator.sandbox-instance")
            == sandbox._instance]
    assert len(mine) <= 1
    assert host_processes_with(TOKEN) == []
    assert re.match(r"sha256:[0-9a-f]{64}$", sandbox.describe()["image_id"])


INTERRUPTED_CHILD = """
import json, signal, sys
# Ctrl-C as in a terminal, even when the suite runs in the background of a non-interactive
# shell, whose children inherit SIGINT ignored (Python then installs no handler).
signal.signal(signal.SIGINT, signal.default_int_handler)
from orchestrator.sandbox.base import Limits
from orchestrator.sandbox.docker import DockerSandbox
box = DockerSandbox(sys.argv[1], Limits(timeout=600, memory="512m"), device="cpu", gpus="none")
try:
    box.run(sys.argv[3], json.loads(sys.argv[2]))
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    raise
"""


def test_keyboard_interrupt_removes_the_container(data, image, suite_guard):
    """Ctrl-C while a candidate runs: run() removes its container before the interrupt
    propagates, and nothing of the process's is left after it exits."""
    code = candidate(forward='print("SLEEPING", flush=True)\nimport time\ntime.sleep(600)')
    events = CLIENT.events(decode=True, until=int(time.time()) + 120,
                           filters={"type": "container", "event": "start", "label": LABEL})
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_CHILD, str(data), json.dumps(JOB), code],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1], text=True,
    )
    try:
        container = None
        for event in events:  # the child's container starts
            if event["Actor"]["Attributes"].get(LABEL_PID) == str(child.pid):
                container = CLIENT.containers.get(event["id"])
                break
        events.close()
        assert container is not None, "the child started no container"
        seen = b""
        for chunk in container.logs(stream=True, follow=True):  # the candidate runs
            seen += chunk
            if b"SLEEPING" in seen:
                break
        assert b"SLEEPING" in seen, seen[-2000:]
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert "INTERRUPTED" in out and "KeyboardInterrupt" in out, out[-2000:]
    assert CLIENT.containers.list(all=True, filters={"label": f"{LABEL_PID}={child.pid}"}) == []


KILLED_HOST_CHILD = """
import sys
from orchestrator.sandbox.base import Limits
from orchestrator.sandbox.docker import DockerSandbox
box = DockerSandbox(sys.argv[1], Limits(memory="512m"), device="cpu", gpus="none",
                    runtime=sys.argv[2])
warm = box._pool.peek()
warm.pump.wake.wait()
print("READY" if warm.pump.ready.is_set() else "NOT READY", warm.container.id, flush=True)
sys.stdin.read()  # until SIGKILL
"""


def test_containers_stop_when_their_host_process_is_killed(data, image, runtime, suite_guard):
    """SIGKILL leaves run() no chance to clean up; the engine then closes the containers'
    stdin, and the runner (--lifeline) exits instead of holding its memory and GPU. The next
    remove_orphans() removes the container and the host folders the dead process left."""
    before = host_dirs()
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_HOST_CHILD, str(data), runtime],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1], text=True,
    )
    container = None
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("READY "), line + child.stdout.read()[-2000:]
        container = CLIENT.containers.get(line.split()[1])
        assert container.labels[LABEL_PID] == str(child.pid)
        child.kill()
        child.wait(timeout=60)
        status = container.wait(timeout=60)  # returns once the runner has exited
        assert status["StatusCode"] == 3, container.logs()[-2000:]
        assert b"the host is gone" in container.logs()
        assert len(host_dirs() - before) == 2  # its job and output folders
        assert remove_orphans(CLIENT) >= 1
        with pytest.raises(docker.errors.NotFound):
            container.reload()
        assert host_dirs() - before == set()
    finally:
        child.kill()
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


def test_remove_orphans_takes_only_containers_of_dead_creators_in_this_namespace(image):
    """Creators are told apart by PID namespace and start time: a container of a process in
    another namespace is never judged, one whose pid was reused by another process is."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    me = process_labels()
    cases = {
        "dead creator": {**me, LABEL_PID: str(gone.pid)},
        "pid reused": {**me, LABEL_STARTED: str(int(me[LABEL_STARTED]) - 1)},
        "other namespace": {**me, LABEL_PID: str(gone.pid), LABEL_PIDNS: "pid:[1]"},
        "alive": me,
    }
    made = {name: CLIENT.containers.create(image, entrypoint=["true"], network_mode="none",
                                           labels={LABEL: "1", "case": name, **labels})
            for name, labels in cases.items()}
    try:
        assert remove_orphans(CLIENT) >= 2  # any real orphans on this engine go too
        left = {c.labels["case"] for c in CLIENT.containers.list(
            all=True, filters={"label": [f"{LABEL}=1", "case"]})}
        assert left == {"other namespace", "alive"}
    finally:
        for container in made.values():
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
