"""How ``/mcp`` is served: DNS-rebinding protection, the search limit, the ingest tools, the
list-changed poll. Free of the ``mcp`` SDK, so ``contextkit serve`` reads its flags without it.

DNS-rebinding protection (the SDK's, on by default): a browser page on another site can make
the browser send requests to ``127.0.0.1``; the ``Host`` (and ``Origin``) header then names that
site, so the SDK answers 421 unless the header names an allowed host. ``contextkit serve``
allows the loopback names on any port, the address it binds (unless ``0.0.0.0``/``::``) and every
``--mcp-allowed-host NAME[:PORT]``: add the names clients reach the server by (a load balancer's
DNS name). ``--mcp-allowed-host '*'`` turns the check off, for a proxy that checks hosts itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

MCP_PATH = "/mcp"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
ENV_PREFIX = "CONTEXTKIT_MCP_"


@dataclass(frozen=True)
class McpSettings:
    """How ``/mcp`` is served: DNS-rebinding protection, limits, the ingest tools.

    ``allowed_hosts``: the ``Host`` header values accepted (``name`` or ``name:port``;
    ``name:*`` takes any port; ``("*",)`` turns the check off, for a proxy that checks the host
    itself). Browsers' ``Origin`` values are accepted for the same hosts over http and https.
    """

    allowed_hosts: tuple[str, ...] = tuple(
        h for name in LOOPBACK_HOSTS for h in (name, f"{name}:*")
    )
    ingest: bool = False
    max_top_k: int = 50
    poll_s: float = 1.0

    @classmethod
    def for_bind(
        cls, host: str, port: int, extra_hosts: tuple[str, ...] = (), *, ingest: bool = False
    ) -> McpSettings:
        """The settings of a server bound to ``host:port``: the loopback names (any port, as a
        port forward changes it), the bound address itself unless it is a wildcard, and
        ``extra_hosts`` (the names clients reach the server by, e.g. behind a load balancer)."""
        if "*" in extra_hosts:
            return cls(allowed_hosts=("*",), ingest=ingest)
        hosts = list(cls.allowed_hosts)
        if host not in ("0.0.0.0", "::", "", *LOOPBACK_HOSTS, "::1"):
            shown = f"[{host}]" if ":" in host else host
            hosts += [shown, f"{shown}:{port}"]
        hosts += [h for h in extra_hosts if h not in hosts]
        return cls(allowed_hosts=tuple(hosts), ingest=ingest)

    def transport_security(self) -> Any:
        """The SDK's ``TransportSecuritySettings`` of these settings."""
        from mcp.server.transport_security import TransportSecuritySettings

        if self.allowed_hosts == ("*",):
            return TransportSecuritySettings(enable_dns_rebinding_protection=False)
        origins = [f"{scheme}://{h}" for h in self.allowed_hosts for scheme in ("http", "https")]
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=list(self.allowed_hosts),
            allowed_origins=origins,
        )

    def to_env(self) -> dict[str, str]:
        """For ``contextkit serve --workers N``: each worker reads them back (:meth:`from_env`)."""
        return {
            f"{ENV_PREFIX}ALLOWED_HOSTS": ",".join(self.allowed_hosts),
            f"{ENV_PREFIX}INGEST": "1" if self.ingest else "0",
            f"{ENV_PREFIX}MAX_TOP_K": str(self.max_top_k),
            f"{ENV_PREFIX}POLL_S": str(self.poll_s),
        }

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> McpSettings:
        env = dict(os.environ if env is None else env)
        p, default = ENV_PREFIX, cls()
        hosts = env.get(f"{p}ALLOWED_HOSTS")
        return cls(
            allowed_hosts=tuple(h for h in hosts.split(",") if h)
            if hosts
            else default.allowed_hosts,
            ingest=env.get(f"{p}INGEST", "0") == "1",
            max_top_k=int(env.get(f"{p}MAX_TOP_K") or default.max_top_k),
            poll_s=float(env.get(f"{p}POLL_S") or default.poll_s),
        )
