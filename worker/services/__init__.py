"""MCP services: which server a user's service name means, and with which credentials.

- `config`: the typed `ServiceConfig` and its validation, the timeouts a call derives from it, and
  the stdio policy. SQL-free: the MCP runtime and the producers import it.
- `registry`: `resolve(user_id, desc)`, the user's own record, else the global one.
- `store`: the `mcp_services` table (saving, listing, the lookup the execution claim embeds).
- `devfile`: the same records from a JSON file in development mode.
- `crypto`: encryption of the stored secrets.

`config` imports only `worker.settings`, `worker.errors` and `worker.validation`; the others may
import `worker.db` as well. Nothing here imports the MCP runtime.
"""
