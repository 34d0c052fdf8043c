"""mcp-worker: Celery workers that call tools on MCP servers for many users.

The Celery app lives in `worker.celery` (`celery -A worker` finds it there); it is not imported
here so that light entry points (the demo MCP server spawned over stdio, the CLI) stay quick.
"""
