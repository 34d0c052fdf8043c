"""A scripted MCP stdio server: `fetch_weekly_report(week=...)` answers that week's work packages
from a JSON file `{"2026-W46": [...], "2026-W47": [...]}` (an unknown week: no work packages).

    python tests/fakes/weekly_server.py WEEKS.json

For week-over-week tests: each week's data is exactly what the test wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    import anyio
    from mcp.server.mcpserver import MCPServer

    weeks = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    server = MCPServer("weekly-script")

    @server.tool()
    def fetch_weekly_report(week: str, project_id: int | None = None) -> dict[str, Any]:
        """The scripted work packages of `week`."""
        return {"project": {"id": 1, "name": "Scripted"}, "week": week, "work_packages": weeks.get(week, [])}

    anyio.run(server.run_stdio_async)


if __name__ == "__main__":
    main()
