"""Every service of docker-compose.yml runs its own `command` on this machine, outside containers.

The file is rendered by `docker-compose config` with .env.example's values; each service's
environment and arguments are then mapped onto this machine: its Postgres URL onto a fresh
database, each Redis database onto one of this test's own, `/data` onto a folder per service,
the ports the services listen on onto free loopback ports. Nothing else is changed, so a command
that breaks in the file breaks here: the migrate command exits 0, the long-running services reach
their healthy state, and every `healthcheck` (the service's own, else the image's HEALTHCHECK),
run the same way, passes. Postgres and Redis are the test's own servers, standing in for the
image services; their healthchecks run against them.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
import yaml
from processes import ping
from stack import clean_env, fresh_database
from test_compose import ROOT, config, example_values
from testenv import LOG_DIR, _redis_base, extra_redis_url

from worker.processes import Child, free_port, spawn, wait_until

# Beat's first tick: dispatch-due-reports is due at every minute boundary.
FIRST_TICK_S = 90.0
# Python imports and the first connections, on a loaded two-core machine.
READY_S = 60.0
COMMAND_TIMEOUT_S = 60.0
# The ports the services listen on inside their containers.
CONTAINER_PORTS = (5555, 8000)
# The images' own services: this machine's Postgres and Redis stand in for them.
STAND_INS = {"postgres": "the test's PostgreSQL", "redis": "the test's Redis"}
ONE_SHOT = ("migrate",)


@dataclass
class Machine:
    """Where the compose names point on this machine."""

    database_url: str
    redis_dbs: dict[int, str]
    data_root: Path
    ports: dict[int, int] = field(default_factory=lambda: {p: free_port() for p in CONTAINER_PORTS})

    def localize(self, text: str, service: str) -> str:
        text = text.replace("$$", "$")  # compose's escape for a literal `$`
        text = re.sub(r"(?<![\w/.])/data(?=/|$)", str(self.data_root / service), text)
        text = text.replace("0.0.0.0", "127.0.0.1")
        for inside, outside in self.ports.items():
            text = re.sub(rf"(?<!\d){inside}(?!\d)", str(outside), text)
        return text

    def env_value(self, value: str, service: str) -> str:
        if value.startswith("postgresql://"):
            url = sa.make_url(value)
            assert url.host == "postgres", (
                f"{service}: DATABASE_URL points at {url.host}, not the postgres service"
            )
            return self.database_url
        redis_url = re.fullmatch(r"redis://redis:6379/(\d+)", value)
        if redis_url:
            number = int(redis_url.group(1))
            if number not in self.redis_dbs:
                self.redis_dbs[number] = extra_redis_url()
            return self.redis_dbs[number]
        return self.localize(value, service)

    def env(self, spec: dict[str, Any], service: str) -> dict[str, str]:
        given = spec.get("environment") or {}
        values = {k: self.env_value(str(v), service) for k, v in given.items() if v is not None}
        (self.data_root / service).mkdir(parents=True, exist_ok=True)
        return clean_env(self.data_root / service, values)

    def argv(self, spec: dict[str, Any], service: str) -> list[str]:
        command = spec["command"]
        parts = command if isinstance(command, list) else shlex.split(command)
        return [self.localize(str(part), service) for part in parts]


def image_healthcheck() -> list[str]:
    """The Dockerfile's HEALTHCHECK, for services that set none of their own."""
    [line] = [ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.startswith("HEALTHCHECK")]
    return ["CMD-SHELL", line.split(" CMD ", 1)[1]]


def healthcheck_argv(spec: dict[str, Any], machine: Machine, service: str) -> list[str]:
    test = (spec.get("healthcheck") or {}).get("test") or image_healthcheck()
    kind, *rest = test
    rest = [machine.localize(part, service) for part in rest]
    if kind == "CMD-SHELL":
        return ["sh", "-c", rest[0]]
    assert kind == "CMD", test
    if rest[0] == "redis-cli":  # the stand-in Redis is not on redis-cli's default address
        rest[1:1] = ["-u", f"{_redis_base()}/0"]
    return rest


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done = config(tmp_path_factory.mktemp("compose"), example_values())
    assert done.returncode == 0, done.stderr
    rendered: dict[str, Any] = yaml.safe_load(done.stdout)["services"]
    return rendered


@dataclass
class Stack:
    specs: dict[str, Any]
    machine: Machine
    migrate: subprocess.CompletedProcess[str]
    running: dict[str, Child]


@pytest.fixture(scope="module")
def stack(services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The migrate command run to its end, then every long-running service started at once."""
    with fresh_database("mcp_worker_compose") as database_url:
        machine = Machine(database_url, {}, tmp_path_factory.mktemp("compose-data"))
        spec = services["migrate"]
        migrate = subprocess.run(
            machine.argv(spec, "migrate"),
            env=machine.env(spec, "migrate"),
            cwd=machine.data_root / "migrate",
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        running: dict[str, Child] = {}
        try:
            for name, spec in services.items():
                if name in STAND_INS or name in ONE_SHOT:
                    continue
                running[name] = spawn(
                    f"compose-{name}",
                    machine.argv(spec, name),
                    machine.env(spec, name),
                    LOG_DIR,
                    cwd=machine.data_root / name,
                    fresh_log=True,
                )
            yield Stack(services, machine, migrate, running)
        finally:
            for child in running.values():
                child.stop()


def test_every_service_is_run_or_stood_in_for(services: dict[str, Any]) -> None:
    assert set(services) - set(STAND_INS) == {*ONE_SHOT, *HEALTHY}, "a new service needs a check here"
    for name in set(services) - set(STAND_INS):
        assert services[name].get("command"), f"{name} runs the image's default command"


def test_migrate_exits_0_at_the_head_revision(stack: Stack) -> None:
    assert stack.migrate.returncode == 0, stack.migrate.stderr
    assert "database at revision" in stack.migrate.stdout
    with sa.create_engine(stack.machine.database_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 1


def _worker_answers(stack: Stack, service: str, prefix: str, supervised: bool = False) -> None:
    """The worker answers a ping; the tools worker, each process `mcp-worker worker` runs for it."""
    from worker.cli.supervise import default_processes, node_names

    child = stack.running[service]
    hostname = f"{prefix}@{socket.gethostname()}"
    count = default_processes() if supervised else 1
    nodes = node_names(hostname, count) if count > 1 else [hostname]
    broker = stack.machine.redis_dbs[0]
    for node in nodes:
        child.wait_for(
            lambda node=node: ping(broker, node), READY_S, f"{node} to answer a ping", interval=0.5
        )


def _beat_ticks(stack: Stack, service: str) -> None:
    child = stack.running[service]
    child.wait_for(
        lambda: "Sending due task dispatch-due-reports" in child.log(), FIRST_TICK_S, "beat's first tick"
    )
    schedule = (stack.machine.data_root / service).glob("celerybeat-schedule*")
    assert any(schedule), "beat keeps its schedule in the data volume"


def _flower_serves(stack: Stack, service: str) -> None:
    child = stack.running[service]
    base = f"http://127.0.0.1:{stack.machine.ports[5555]}"

    def healthy() -> bool:
        try:
            return httpx2.get(f"{base}/healthcheck", timeout=2.0).status_code == 200
        except httpx2.TransportError:
            return False

    child.wait_for(healthy, READY_S, "flower's /healthcheck")
    assert httpx2.get(f"{base}/api/workers", timeout=5.0).status_code == 401
    user, _, password = example_values()["FLOWER_BASIC_AUTH"].partition(":")
    assert httpx2.get(f"{base}/api/workers", auth=(user, password), timeout=10.0).status_code == 200


def _demo_lists_tools(stack: Stack, service: str) -> None:
    from worker import mcp
    from worker.services.config import ServiceConfig

    child = stack.running[service]
    port = stack.machine.ports[8000]
    token = stack.specs[service]["environment"]["MCP_DEMO_TOKEN"]
    url = f"http://127.0.0.1:{port}/mcp"
    demo = ServiceConfig(
        user_id="compose", desc=service, mode="streamable_http", url=url, endpoint=None, api_key=token
    )

    def listed() -> list[dict[str, Any]] | None:
        try:
            return mcp.list_tools(demo)
        except Exception:  # not listening yet: the child's death ends the wait instead
            return None

    tools = child.wait_for(listed, READY_S, "the demo server's tools over MCP", interval=0.5)
    assert {"fetch_weekly_report", "list_projects", "echo"} <= {tool["name"] for tool in tools}


HEALTHY = {
    "worker-tools": lambda stack, name: _worker_answers(stack, name, "tools", supervised=True),
    "worker-reports": lambda stack, name: _worker_answers(stack, name, "reports"),
    "beat": _beat_ticks,
    "flower": _flower_serves,
    "demo-mcp": _demo_lists_tools,
}


@pytest.mark.parametrize("service", sorted(HEALTHY))
def test_a_long_running_service_reaches_its_healthy_state(stack: Stack, service: str) -> None:
    assert stack.migrate.returncode == 0, "the services need the migrated database"
    HEALTHY[service](stack, service)
    assert stack.running[service].alive()


@pytest.mark.parametrize("service", sorted([*HEALTHY, *STAND_INS]))
def test_the_services_healthcheck_passes(stack: Stack, services: dict[str, Any], service: str) -> None:
    spec = services[service]
    if service in HEALTHY:
        HEALTHY[service](stack, service)
    argv = healthcheck_argv(spec, stack.machine, service)
    env = stack.machine.env(spec, service)
    if service == "postgres":  # pg_isready reaches the stand-in as the container reaches its own
        url = sa.make_url(stack.machine.database_url)
        env.update(PGHOST=url.host or "127.0.0.1", PGPORT=str(url.port or 5432))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert done.returncode == 0, f"{shlex.join(argv)}: {done.stdout}{done.stderr}"


def test_the_long_running_services_stop_cleanly(stack: Stack) -> None:
    for name in HEALTHY:
        HEALTHY[name](stack, name)
    codes = {name: stack.running[name].stop() for name in HEALTHY}
    # A warm shutdown: Celery and the servers exit 0 on SIGTERM (Docker's stop).
    assert codes == dict.fromkeys(HEALTHY, 0), {n: stack.running[n].tail(1500) for n in codes if codes[n]}
    wait_until(lambda: all(not c.alive() for c in stack.running.values()), 10, "every service to exit")
