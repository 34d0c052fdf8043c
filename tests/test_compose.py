"""docker-compose.yml parses with the values of .env.example, refuses to run without the secrets,
publishes Flower on loopback only and gives each worker time to finish its tasks when stopped.
Needs the `docker-compose` command (no engine): without it these tests fail, saying how to install
it; they never skip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")
RUN_TIMEOUT_S = 60


def compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail(
            "the docker-compose command is not installed: the compose tests render docker-compose.yml with it "
            "(Debian: apt-get install docker-compose; .ci/run installs it)"
        )
    return found


def example_values() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def config(tmp_path: Path, values: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with `values` as the only source of variables."""
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    # Nothing from this process's environment may fill a variable in (it takes precedence over
    # --env-file), and the project's own .env must not be read: run from an empty folder.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run(
        [compose(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def service_block(rendered: str, name: str) -> list[str]:
    """The lines of one service in `docker-compose config` output (services at two spaces)."""
    lines = rendered.splitlines()
    start = lines.index(f"  {name}:")
    block = []
    for line in lines[start + 1 :]:
        if line.startswith("  ") and not line.startswith("   "):
            break
        if not line.startswith("  "):
            break
        block.append(line)
    return block


def test_config_with_the_example_env_is_valid(tmp_path: Path) -> None:
    values = example_values()
    assert set(REQUIRED_SECRETS) <= set(values), ".env.example must list every required secret"
    done = config(tmp_path, values, "-q")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("missing", REQUIRED_SECRETS)
def test_config_without_a_secret_is_refused(tmp_path: Path, missing: str) -> None:
    values = {k: v for k, v in example_values().items() if k != missing}
    done = config(tmp_path, values, "-q")
    assert done.returncode != 0
    assert missing in done.stderr


def test_flower_is_published_on_loopback_only(tmp_path: Path) -> None:
    done = config(tmp_path, {**example_values(), "FLOWER_PORT": "5599"})
    assert done.returncode == 0, done.stderr
    block = service_block(done.stdout, "flower")
    start = block.index("    ports:")
    ports = []
    for line in block[start + 1 :]:
        if not line.startswith("    - "):
            break
        ports.append(line.removeprefix("    - ").strip("'\""))
    assert ports == ["127.0.0.1:5599:5555/tcp"]
    # No other service publishes a port at all: Postgres, Redis and the workers stay internal.
    published = [i for i, line in enumerate(done.stdout.splitlines()) if line == "    ports:"]
    assert len(published) == 1


def test_the_tools_worker_runs_with_the_production_defaults_the_benchmark_measures() -> None:
    """Compose starts the tools worker with no pool options, so it gets `mcp-worker worker`'s
    production defaults (threads, one process per core): the ones `make bench` measures."""
    import inspect

    from bench.env import BenchEnv

    text = COMPOSE_FILE.read_text()
    assert 'command: ["mcp-worker", "worker", "-Q", "mcp.tools", "-n", "tools@%h"]' in text
    assert '"mcp-worker", "worker", "-Q", "mcp.tools", "-P"' not in text
    assert '"worker.cli", "worker", "-Q", QUEUE]' in inspect.getsource(BenchEnv.start_worker)
    assert "MCP_TOOLS_CONCURRENCY=200" in ENV_EXAMPLE.read_text()


def _seconds(duration: str) -> int:
    """A compose duration such as `6m30s` in seconds."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration.strip("'\""))
    assert match and any(match.groups()), duration
    minutes, seconds = (int(part or 0) for part in match.groups())
    return 60 * minutes + seconds


@pytest.mark.parametrize(
    ("service", "hard_limit"),
    [
        ("worker-tools", Settings.from_env({}).task_time_limit),
        ("worker-reports", Settings.from_env({}).report_time_limit),
    ],
)
def test_a_worker_is_given_longer_to_stop_than_its_longest_task(
    tmp_path: Path, service: str, hard_limit: int
) -> None:
    # Otherwise a deploy's SIGKILL cuts running calls off and they run a second time.
    done = config(tmp_path, example_values())
    assert done.returncode == 0, done.stderr
    [grace] = [
        line.split(":", 1)[1] for line in service_block(done.stdout, service) if "stop_grace_period" in line
    ]
    assert _seconds(grace.strip()) > hard_limit
