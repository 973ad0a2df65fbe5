"""`orchestrator run --sandbox docker` end to end on real Fashion-MNIST with a scripted LLM."""

from __future__ import annotations

import os
import signal
import time

import pytest

from orchestrator import outcomes as fc
from tests import replies
from tests.test_search_e2e import DIAGNOSIS, by_role, orchestrator, read_records, run_args

docker = pytest.importorskip("docker")

try:
    CLIENT = docker.from_env(timeout=120)
    CLIENT.ping()
except Exception as exc:  # noqa: BLE001 - any failure means: no engine here
    pytest.skip(f"no Docker engine reachable ({type(exc).__name__})", allow_module_level=True)

pytestmark = [pytest.mark.docker, pytest.mark.slow]
LABEL = "org.orchestrator.sandbox"
LABEL_PID = "org.orchestrator.host-pid"


@pytest.fixture(scope="module")
def image() -> str:
    from orchestrator.sandbox.image import ensure_image

    return ensure_image(CLIENT, offline=True, progress=False)


def test_docker_run_journals_valid_and_failing_candidates(image, fake_ollama, fashion_data_dir,
                                                          tmp_path):
    generated = [(replies.VALID_NET, fc.OK), (replies.SHAPE_MISMATCH_NET, fc.SHAPE_ERROR),
                 (replies.NO_CODE_REPLY, fc.EXTRACT_ERROR), (replies.NAN_NET, fc.NAN_LOSS),
                 (replies.prose_wrapped(replies.VALID_NET_WIDER), fc.OK)]
    server = fake_ollama(default=by_role([code for code, _ in generated], DIAGNOSIS))
    before = {c.id for c in CLIENT.containers.list(all=True, filters={"label": LABEL})}
    args = run_args(server, fashion_data_dir, tmp_path, "dock", len(generated))
    args[args.index("local")] = "docker"
    proc = orchestrator(*args)
    output, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, output

    records = read_records(tmp_path / "dock")
    assert [r["status"] for r in records] == [status for _, status in generated]
    assert all(r["accuracy"] > 0.15 for r in records if r["status"] == fc.OK)
    evaluated = [r for r in records if r["timings"]["evaluate"] > 0]
    assert evaluated and all(r["sandbox"]["kind"] == "docker" for r in evaluated)
    assert all(r["sandbox"]["image_id"] == image for r in evaluated)
    # Every container is gone, the pre-warmed one included.
    after = {c.id for c in CLIENT.containers.list(all=True, filters={"label": LABEL})}
    assert after <= before


SLEEPY_NET = replies.VALID_NET.replace("import torch.nn as nn\n", """import time

import torch.nn as nn

print("CANDIDATE RUNNING", flush=True)
time.sleep(600)
""", 1)


def test_containers_of_a_killed_run_are_removed_when_it_resumes(image, fake_ollama,
                                                                fashion_data_dir, tmp_path):
    server = fake_ollama(default=by_role([SLEEPY_NET, replies.VALID_NET, replies.VALID_NET],
                                         DIAGNOSIS))
    args = run_args(server, fashion_data_dir, tmp_path, "killed", 2)
    args[args.index("local")] = "docker"
    scratch = tmp_path / "scratch"  # the killed run cannot delete its job folders itself
    scratch.mkdir()
    events = CLIENT.events(decode=True, until=int(time.time()) + 300,
                           filters={"type": "container", "event": "start", "label": LABEL})
    first = orchestrator(*args, scratch=scratch)
    try:
        container = next(CLIENT.containers.get(e["id"]) for e in events
                         if e["Actor"]["Attributes"].get(LABEL_PID) == str(first.pid))
        events.close()
        for chunk in container.logs(stream=True, follow=True):  # candidate 1 is running
            if b"CANDIDATE RUNNING" in chunk:
                break
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    finally:
        first.kill()
    # The engine closed the runner's stdin (its lifeline) when the host died: it stopped by
    # itself, but nobody removed it.
    assert container.wait(timeout=60)["StatusCode"] == 3
    orphans = CLIENT.containers.list(all=True, filters={"label": f"{LABEL_PID}={first.pid}"})
    assert container.id in {c.id for c in orphans}

    second = orchestrator(*args, "--resume", scratch=scratch)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output
    assert f"removed {len(orphans)} sandbox container(s) of a killed run" in output
    assert CLIENT.containers.list(all=True, filters={"label": f"{LABEL_PID}={first.pid}"}) == []
    assert list(scratch.glob("orchestrator-*")) == []  # the killed run's folders went too
    assert [(r["iteration"], r["status"]) for r in read_records(tmp_path / "killed")] == [
        (1, fc.OK), (2, fc.OK)]
