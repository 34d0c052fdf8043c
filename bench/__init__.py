"""Benchmarks for mcp-worker: `python -m bench` (or `make bench`).

Starts everything it needs on loopback (a Redis server, a throwaway Postgres database, the demo MCP
server, a Celery worker with the production settings), runs each case several times round-robin,
prints one table and writes `bench/results/<timestamp>.json`. See `bench/README.md`.
"""
