"""`mcp-worker services add|list|show|remove|check`.

The api key is never taken as a plain command-line value (it would show in `ps` and shell
history): it comes from an environment variable, a file, stdin, or the JSON document. So do an
OAuth client's secret and private key (`--client-secret-file`, `--client-secret-env`,
`--private-key-file`); `--auth` on the command line may not carry them. Output shows only a
masked form.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from worker.cli.output import print_json, print_table
from worker.db.engine import session_scope
from worker.errors import InvalidService, ServiceNotFound
from worker.services.config import mask_secret
from worker.services.registry import list_services, resolve
from worker.services.store import remove_service, save_service
from worker.settings import get_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    services = sub.add_parser("services", help="manage users' MCP service configurations")
    cmds = services.add_subparsers(dest="services_command", metavar="ACTION")
    cmds.required = True

    add = cmds.add_parser("add", help="add or update a service (by user and desc)")
    add.add_argument("--json", metavar="FILE", help="a JSON object with the service's fields ('-' for stdin)")
    add.add_argument("--user", dest="user_id")
    add.add_argument("--desc")
    add.add_argument("--mode", dest="interaction_mode", help="stdio, sse or streamable_http (aliases: http)")
    add.add_argument("--url", help="the server URL, or the command line of a stdio server")
    add.add_argument("--endpoint", help="the upstream system the server talks to (passed to stdio servers)")
    key = add.add_mutually_exclusive_group()
    key.add_argument("--api-key-env", metavar="VAR", help="read the api key from this environment variable")
    key.add_argument("--api-key-file", metavar="FILE", help="read the api key from this file ('-' for stdin)")
    oauth = add.add_mutually_exclusive_group()
    oauth.add_argument(
        "--client-secret-file", metavar="FILE", help="an OAuth client's secret from this file ('-' for stdin)"
    )
    oauth.add_argument(
        "--client-secret-env", metavar="VAR", help="an OAuth client's secret from this variable"
    )
    oauth.add_argument(
        "--private-key-file",
        metavar="FILE",
        help="an OAuth client's PEM private key (private_key_jwt) from this file ('-' for stdin)",
    )
    add.add_argument("--params", help="default tool arguments, a JSON object")
    add.add_argument(
        "--auth", help='how to authenticate, a JSON object, e.g. {"type": "api_key", "header": "X-API-Key"}'
    )
    add.set_defaults(handler=_add)

    lst = cmds.add_parser("list", help="list services (a user's own and the global ones with --user)")
    lst.add_argument("--user", dest="user_id")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(handler=_list)

    show = cmds.add_parser("show", help="show the service a user resolves to (key masked)")
    show.add_argument("user_id")
    show.add_argument("desc")
    show.set_defaults(handler=_show)

    rm = cmds.add_parser("remove", help="delete a user's service row")
    rm.add_argument("user_id")
    rm.add_argument("desc")
    rm.set_defaults(handler=_remove)

    cmds.add_parser(
        "reencrypt", help="encrypt every row's credentials with the first key of MCP_SECRET_KEY"
    ).set_defaults(handler=_reencrypt)

    check = cmds.add_parser("check", help="connect to the user's service and list its tools")
    check.add_argument("user_id")
    check.add_argument("desc")
    check.set_defaults(handler=_check)


def _read_secret(env: str | None, file: str | None) -> str | None:
    if env:
        value = os.environ.get(env)
        if value is None:
            raise InvalidService(f"environment variable {env} is not set")
        return value
    if file:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text()
        except OSError as exc:
            raise InvalidService(f"cannot read {file}: {exc.strerror}") from None
        return text.strip()
    return None


def _read_key(args: argparse.Namespace) -> str | None:
    return _read_secret(args.api_key_env, args.api_key_file)


def _one_stdin(args: argparse.Namespace) -> None:
    readers = (args.json, args.api_key_file, args.client_secret_file, args.private_key_file)
    if sum(1 for source in readers if source == "-") > 1:
        raise InvalidService(
            "only one of --json, --api-key-file, --client-secret-file, --private-key-file can be '-'"
        )


def _add_oauth_secret(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """The OAuth client secret or private key from its file or variable, into `auth`."""
    secret = _read_secret(args.client_secret_env, args.client_secret_file)
    key = _read_secret(None, args.private_key_file)
    if secret is None and key is None:
        return
    auth = record.get("auth")
    if not isinstance(auth, dict) or auth.get("type") != "oauth":
        raise InvalidService(
            '--client-secret-* and --private-key-file need --auth \'{"type": "oauth", ...}\''
        )
    if secret is not None:
        auth["client_secret"] = secret
    if key is not None:
        auth["private_key"] = key + "\n"  # PEM ends with a newline


def _json_option(raw: str | None, name: str) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidService(f"--{name} is not valid JSON: {exc.msg}") from None


def _add(args: argparse.Namespace) -> int:
    _one_stdin(args)
    record: dict[str, Any] = {}
    if args.json:
        text = sys.stdin.read() if args.json == "-" else Path(args.json).read_text()
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidService(f"--json: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(record, dict):
            raise InvalidService("--json: expected one JSON object")
    for field in ("user_id", "desc", "interaction_mode", "url", "endpoint"):
        if getattr(args, field) is not None:
            record[field] = getattr(args, field)
    for field in ("params", "auth"):
        value = _json_option(getattr(args, field), field)
        if value is not None:
            record[field] = value
    if isinstance(record.get("auth"), dict) and args.auth is not None:
        on_argv = sorted({"client_secret", "private_key"} & set(record["auth"]))
        if on_argv:
            raise InvalidService(
                f"--auth may not carry {', '.join(on_argv)} (it would show in ps and shell history); "
                "use --client-secret-file, --client-secret-env or --private-key-file"
            )
    _add_oauth_secret(args, record)
    key = _read_key(args)
    if key is not None:
        record["api_key"] = key
    record.setdefault("api_key", "")
    with session_scope() as session:
        config = save_service(session, record)
    from worker.services.crypto import warn_if_unencrypted

    warn_if_unencrypted(get_settings().secret_key)
    print_json(config.public_dict())
    return 0


def _list(args: argparse.Namespace) -> int:
    with session_scope() as session:
        configs = list_services(None if get_settings().development_mode else session, args.user_id)
    if args.json:
        print_json([c.public_dict() for c in configs])
        return 0
    print_table(
        ("user", "desc", "mode", "url", "api_key"),
        [(c.user_id, c.desc, c.mode, c.url or "(default command)", mask_secret(c.api_key)) for c in configs],
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    print_json(resolve(args.user_id, args.desc).public_dict())
    return 0


def _remove(args: argparse.Namespace) -> int:
    with session_scope() as session:
        removed = remove_service(session, args.user_id, args.desc)
    if not removed:
        raise ServiceNotFound(args.user_id, args.desc)
    print(f"removed {args.desc!r} for {args.user_id!r}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from worker import mcp

    config = resolve(args.user_id, args.desc)
    tools = mcp.list_tools(config)
    print_table(
        ("tool", "description"),
        [(t["name"], (t.get("description") or "").split("\n")[0][:80]) for t in tools],
    )
    return 0


def _reencrypt(_: argparse.Namespace) -> int:
    from worker.services.store import reencrypt_all

    with session_scope() as session:
        count = reencrypt_all(session)
    print(f"re-encrypted the credentials of {count} service(s)")
    return 0
