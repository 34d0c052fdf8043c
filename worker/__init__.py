"""mcp-worker: Celery workers that call tools on MCP servers for many users.

Layers, each importing only those below it (docs/ARCHITECTURE.md draws them):

    entry points   celery (the app), tasks, client (producers), cli/
    work           execution/ (audited tool calls), reports/, scheduling/, demo/, ops/
    runtime        mcp/ (event loop, session pool, transports)
    records        services/ (ServiceConfig, registry, store), db/ (engine, models, schema)
    base           settings, errors, redaction, validation, names

The Celery app lives in `worker.celery` (`celery -A worker` finds it there); it is not imported
here so that light entry points (the demo MCP server spawned over stdio, the CLI) stay quick.
"""
