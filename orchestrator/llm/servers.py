"""Several Ollama servers shared by the search chains: round-robin placement and failover."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from orchestrator.llm.client import OllamaClient, Warn


class Servers:
    """One OllamaClient per server, shared by the chains (thread-safe).

    Chain c starts on server c mod S. A server whose call failed as unreachable (the client's
    retries spent) is marked dead, and its chains move to the next live server in order; a
    chain whose server is dead, with no live one left, still tries its own (a server that has
    come back answers, and is live again). Nothing is retried here: a chain asks `instead()`
    for another server and makes the call again itself.
    """

    def __init__(self, clients: Sequence[OllamaClient], on_warning: Warn | None = None) -> None:
        if not clients:
            raise ValueError("Servers needs at least one client")
        self.clients = list(clients)
        self.on_warning = on_warning
        self.digests: dict[str, dict[str, str]] = {}  # host -> model -> digest, set at start
        self._dead: set[str] = set()  # hosts
        self._lock = threading.Lock()

    @property
    def hosts(self) -> list[str]:
        return [c.host for c in self.clients]

    def for_chain(self, chain: int) -> OllamaClient:
        """The server chain `chain` starts on: round-robin over the servers."""
        return self.clients[chain % len(self.clients)]

    def is_live(self, client: OllamaClient) -> bool:
        with self._lock:
            return client.host not in self._dead

    def mark_dead(self, client: OllamaClient) -> None:
        with self._lock:
            new = client.host not in self._dead
            self._dead.add(client.host)
        if new and self.on_warning is not None and len(self.clients) > 1:
            self.on_warning(f"the Ollama server at {client.host} is unreachable: its chains "
                            "move to the other servers")

    def mark_live(self, client: OllamaClient) -> None:
        with self._lock:
            self._dead.discard(client.host)

    def instead(self, client: OllamaClient) -> OllamaClient | None:
        """The next live server after `client` in the list (wrapping round), or None when no
        other server is live."""
        index = self.clients.index(client)
        with self._lock:
            for step in range(1, len(self.clients)):
                other = self.clients[(index + step) % len(self.clients)]
                if other.host not in self._dead:
                    return other
        return None

    def close(self) -> None:
        for client in self.clients:
            client.close()
