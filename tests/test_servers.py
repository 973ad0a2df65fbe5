"""Several Ollama servers (orchestrator/llm/servers.py) behind the roles: round-robin placement
of the chains, failover off a dead server, an error only when none answers. Real HTTP to the
scripted server."""

from __future__ import annotations

from orchestrator.llm.client import GenerationOptions, OllamaClient
from orchestrator.llm.servers import Servers
from orchestrator.search.roles import Roles
from tests.fake_ollama import Reply

MODELS = ["coder:test", "improver:test"]


def servers_of(*fakes, warnings: list[str] | None = None) -> Servers:
    clients = [OllamaClient(f.url, GenerationOptions(request_timeout=5.0), retries=2,
                            backoff=0.0) for f in fakes]
    return Servers(clients, on_warning=None if warnings is None else warnings.append)


def roles(servers: Servers, chain: int) -> Roles:
    return Roles(servers, "coder:test", "improver:test", 42 + chain * 1_000_000, chain=chain)


def test_chains_start_round_robin_and_name_the_server(fake_ollama) -> None:
    a, b = (fake_ollama(default=Reply(content="```python\nx = 1\n```")) for _ in range(2))
    servers = servers_of(a, b)
    calls = [roles(servers, chain).generate([{"role": "user", "content": "go"}])
             for chain in range(3)]
    assert [c.info["host"] for c in calls] == [a.url, b.url, a.url]
    assert all(c.error is None and c.text for c in calls)
    assert len(a.chat_requests()) == 2 and len(b.chat_requests()) == 1


def test_a_dead_servers_chain_moves_to_a_live_one_and_stays(fake_ollama) -> None:
    a, b = (fake_ollama(default=Reply(content="ok")) for _ in range(2))
    warnings: list[str] = []
    servers = servers_of(a, b, warnings=warnings)
    chain0, chain1 = roles(servers, 0), roles(servers, 1)
    assert chain1.generate([{"role": "user", "content": "1"}]).info["host"] == b.url
    b.close()
    moved = chain1.generate([{"role": "user", "content": "2"}])
    assert (moved.error, moved.text, moved.info["host"]) == (None, "ok", a.url)
    assert chain1.client.host == a.url and not servers.is_live(servers.clients[1])
    assert chain1.improve([{"role": "user", "content": "3"}])[0].info["host"] == a.url
    assert chain0.generate([{"role": "user", "content": "4"}]).info["host"] == a.url
    assert [w for w in warnings if "unreachable" in w] == [
        f"the Ollama server at {b.url} is unreachable: its chains move to the other servers"]
    assert [body["options"]["seed"] for body in a.chat_requests()] == [1_000_043, 1_000_044, 42]


def test_only_when_every_server_is_down_is_the_call_an_error(fake_ollama) -> None:
    a, b = (fake_ollama(default=Reply(content="ok")) for _ in range(2))
    servers = servers_of(a, b)
    chain1 = roles(servers, 1)
    a.close()
    b.close()
    failed = chain1.generate([{"role": "user", "content": "go"}])
    assert failed.text == "" and "cannot reach the Ollama server" in failed.error
    assert failed.info["host"] == a.url  # the last server tried
    assert failed.info["seed"] == 1_000_042 and chain1.calls == 1  # one call, one seed


def test_a_server_that_comes_back_is_used_again(fake_ollama) -> None:
    """With every server marked dead, a chain still tries its own: one that answers again is
    live again."""
    a = fake_ollama(default=Reply(content="ok"))
    servers = servers_of(a)
    chain0 = roles(servers, 0)
    servers.mark_dead(servers.clients[0])
    call = chain0.generate([{"role": "user", "content": "go"}])
    assert (call.error, call.info["host"]) == (None, a.url)
    assert servers.is_live(servers.clients[0])


def test_one_client_still_makes_roles() -> None:
    client = OllamaClient("http://127.0.0.1:9", retries=1)
    one = Roles(client, "coder:test", "improver:test", 42)
    assert one.client is client and one.servers.clients == [client]
