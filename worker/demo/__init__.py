"""The demo: not production code, but shipped so a fresh machine can run the whole flow.

- `flow`: `mcp-worker demo`, the embedded default end to end (worker, demo servers, a call, a report).
- `server`: the demo MCP server (stdio, SSE, streamable HTTP) over `data/demo_projects.json`.
- `sample_data`: the seed's sample services and templates.

May import anything in `worker`; nothing in `worker` outside the CLI imports it.
"""
