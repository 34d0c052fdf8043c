"""mcp-worker: Celery workers that call tools on MCP servers for many users."""

from worker.celery import app

__all__ = ["app"]
