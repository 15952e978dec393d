"""``scripts/test-pg`` (what ``scripts/test`` does with PostgreSQL): it stops, at exit, the
cluster it started itself, never one it found running, and not while another run noted in
the cluster's data dir is alive. Real PostgreSQL clusters on ports and data dirs of their own
(never the shared one on 54329)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from heaprelay.testing.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PG_BINS, reason="PostgreSQL is not installed (scripts/setup-test-env)"),
]


@pytest.fixture
def cluster() -> Iterator[tuple[int, Path]]:
    """(a free port, a data dir path) for a cluster of this test; stopped and removed after."""
    parent = Path(tempfile.mkdtemp(prefix="heaprelay-pg-script-", dir="/tmp"))
    parent.chmod(0o755)  # the postgres user must reach the data dir
    data_dir = parent / "data"
    try:
        yield free_port(), data_dir
    finally:
        if (data_dir / "postmaster.pid").exists():
            pg_ctl(data_dir, "-m", "immediate", "-w", "stop")
        shutil.rmtree(parent, ignore_errors=True)


def pg_ctl(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(PG_BINS[-1] / "pg_ctl"), "-D", str(data_dir), *args]
    if os.getuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def running(data_dir: Path) -> bool:
    return pg_ctl(data_dir, "status").returncode == 0


def script(port: int, data_dir: Path, body: str) -> subprocess.CompletedProcess[str]:
    """``body`` in bash after sourcing scripts/test-pg, as scripts/test does (a trap that
    calls heaprelay_pg_down at exit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
    env |= {
        "HEAPRELAY_TEST_PG_PORT": str(port),
        "HEAPRELAY_TEST_PG_DIR": str(data_dir),
        "VENV": str(Path(os.environ.get("VENV", ROOT / ".venv")).resolve()),
    }
    return subprocess.run(
        [
            "bash",
            "-c",
            "set -euo pipefail; source scripts/test-pg; heaprelay_pg_up\n"
            "trap 'status=$?; heaprelay_pg_down; exit $status' EXIT\n" + body,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_scripts_test_wires_the_stop_at_exit() -> None:
    text = (ROOT / "scripts" / "test").read_text()
    assert "trap 'status=$?; heaprelay_pg_down; exit $status' EXIT" in text
    assert "exec " not in text.split("trap", 1)[1]  # an exec would skip the trap
    assert (
        "source scripts/test-pg\nheaprelay_pg_up" in (ROOT / "scripts/setup-test-env").read_text()
    )


def test_it_stops_only_the_cluster_it_started_and_none_in_use(cluster: tuple[int, Path]) -> None:
    port, data_dir = cluster
    done = script(port, data_dir, 'echo "$HEAPRELAY_TEST_PG_URL|$HEAPRELAY_TEST_PG_STARTED"')
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip() == f"postgresql://postgres@127.0.0.1:{port}/heaprelay_test|{data_dir}"
    )
    assert not running(data_dir)  # started by the run, stopped at its exit

    # Found running (started by someone else): used, never stopped.
    started = pg_ctl(
        data_dir,
        "-l",
        str(data_dir / "server.log"),
        "-w",
        "-o",
        f"-p {port} -c listen_addresses=127.0.0.1 -k {data_dir}",
        "start",
    )
    assert started.returncode == 0, started.stderr
    done = script(port, data_dir, 'echo "${HEAPRELAY_TEST_PG_STARTED:-found}"')
    assert (done.returncode, done.stdout.strip()) == (0, "found"), done.stderr
    assert running(data_dir)
    assert pg_ctl(data_dir, "-m", "fast", "-w", "stop").returncode == 0

    # Started by the run, but another run (here: this test's process) noted itself as a
    # user of the cluster: left running for it, and said so.
    note = f'echo -n > "$HEAPRELAY_TEST_PG_STARTED/heaprelay-users/{os.getpid()}"'
    done = script(port, data_dir, note)
    assert done.returncode == 0, done.stderr
    assert running(data_dir)
    assert f"leaving the PostgreSQL cluster in {data_dir} running" in done.stderr
    (data_dir / "heaprelay-users" / str(os.getpid())).unlink()
    assert pg_ctl(data_dir, "-m", "fast", "-w", "stop").returncode == 0

    # A note of a process that is gone does not hold the cluster; the exit status is kept.
    (data_dir / "heaprelay-users" / "999999999").touch()
    done = script(port, data_dir, "exit 7")
    assert done.returncode == 7
    assert not running(data_dir)
