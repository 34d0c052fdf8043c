"""`mcp-worker db upgrade|downgrade|current|sample-data`."""

from __future__ import annotations

import argparse

from worker.db import schema
from worker.db.engine import session_scope
from worker.demo.sample_data import load_sample_data


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="database schema and sample data")
    cmds = db.add_subparsers(dest="db_command", metavar="ACTION")
    cmds.required = True
    up = cmds.add_parser("upgrade", help="run the migrations up to REVISION (default head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(handler=_upgrade)
    down = cmds.add_parser("downgrade", help="migrate down to REVISION (default base: drops everything)")
    down.add_argument("revision", nargs="?", default="base")
    down.set_defaults(handler=_downgrade)
    cmds.add_parser("current", help="print the current and head revisions").set_defaults(handler=_current)
    cmds.add_parser(
        "sample-data", help="load the seed's sample services and templates (idempotent)"
    ).set_defaults(handler=_sample)


def _upgrade(args: argparse.Namespace) -> int:
    schema.upgrade(revision=args.revision)
    print(f"database at revision {schema.current_revision()}")
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    schema.downgrade(revision=args.revision)
    print(f"database at revision {schema.current_revision()}")
    return 0


def _current(_: argparse.Namespace) -> int:
    current, head = schema.current_revision(), schema.head_revision()
    print(f"current: {current}  head: {head}")
    return 0 if current == head else 1


def _sample(_: argparse.Namespace) -> int:
    schema.ensure_schema()
    with session_scope() as session:
        services, templates = load_sample_data(session)
    print(f"sample data: {services} service(s) and {templates} template(s) added")
    return 0
