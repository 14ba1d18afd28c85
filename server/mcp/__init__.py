"""MCP (Model Context Protocol) for agents, on the official ``mcp`` SDK (2.x).

Built on the SDK's low-level ``Server`` class with handlers, because what a client sees is
generated per workspace from the registry and scoped per API key, which the decorator-style
``MCPServer`` (a fixed set of Python functions) cannot express. Modules:

- ``catalog``: tools, prompts and resources generated from a workspace's definitions;
- ``server``: the handlers (per caller), the list-changed watcher, the stdio transport
  (``contextkit mcp``);
- ``endpoint``: ``/mcp`` on the HTTP app (Streamable HTTP, stateless, API keys through the
  SDK's token-verification hook);
- ``results``: structured and text results, tool errors, rendered prompts;
- ``settings``: DNS-rebinding protection and limits of ``/mcp`` (no SDK import).

Only ``settings`` may be imported without the ``mcp`` package (the ``mcp`` extra).
"""
