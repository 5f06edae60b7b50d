"""Session fixtures for the SDK tests: run lumen-mock and the gateway as subprocesses.

The gateway runs under the runtime ``LUMEN_TEST_RUNTIME`` names (as in the Rust end-to-end
suites, ``tests/tests/common/runtime.rs``):

- ``host`` (default): ``lumen-host up``;
- ``spin-sqlite``: real ``spin up`` on Spin's default SQLite key-value store;
- ``spin-redis``: two real ``spin up`` processes sharing one ``redis-server`` (started here on a
  unix socket): the admin API is called on the first, the SDKs on the second, so every key the
  SDKs use was created by the other process.

Spin is ``SPIN_BIN``, else ``spin`` on ``PATH``, else the build in ``../shared/tools``. lumen-mock
and lumen-host come from ``target/release`` (override the directory with ``LUMEN_BIN_DIR``);
build them first with ``scripts/build.sh`` (``scripts/test.sh`` does). Each server prints
``Serving http://ADDR``, which is how the fixtures learn the port. Process output goes to log
files under pytest's temporary directory; their paths are shown in startup failures and in the
report header (``-v``).
"""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from openai import OpenAI

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("LUMEN_BIN_DIR", REPO / "target" / "release"))
# Compiling the wasm components on first start can take a while on a 2-core machine.
HOST_STARTUP_TIMEOUT_S = float(os.environ.get("LUMEN_HOST_STARTUP_TIMEOUT", "180"))
MOCK_STARTUP_TIMEOUT_S = 30.0
UPSTREAM_KEY = "sk-upstream-test"
MOCK_TOKEN_DELAY_MS = 2
RUNTIME = os.environ.get("LUMEN_TEST_RUNTIME") or "host"
RUNTIMES = ("host", "spin-sqlite", "spin-redis")


@dataclass
class Server:
    """A child process that announced ``Serving http://ADDR``."""

    name: str
    proc: subprocess.Popen
    addr: str
    stdout_log: Path
    stderr_log: Path
    # Started in its own session: stopped as a process group (``spin up`` runs the app in a
    # child process that would outlive its parent).
    group: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def stop(self) -> None:
        if self.group:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def spawn_server(name: str, argv: list[str], env: dict[str, str], log_dir: Path, timeout_s: float, group: bool = False) -> Server:
    """Starts ``argv`` and waits up to ``timeout_s`` for its ``Serving http://ADDR`` line (the
    first line that is not blank: Spin prints an empty one first)."""
    binary = Path(argv[0])
    if not binary.is_file():
        pytest.fail(
            f"{binary} not found: build it first (scripts/build.sh) or set LUMEN_BIN_DIR",
            pytrace=False,
        )
    stdout_log = log_dir / f"{name}.stdout.log"
    stderr_log = log_dir / f"{name}.stderr.log"
    stderr = stderr_log.open("wb")
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        bufsize=1,
        start_new_session=group,
    )
    stderr.close()
    first_line: queue.Queue[str | None] = queue.Queue(maxsize=1)

    def pump() -> None:
        # Hand the first line to the fixture, then keep draining so the child never blocks.
        assert proc.stdout is not None
        with stdout_log.open("w") as log:
            announced = False
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if not announced and line.strip():
                    first_line.put(line)
                    announced = True
            if not announced:
                first_line.put(None)

    threading.Thread(target=pump, name=f"{name}-stdout", daemon=True).start()
    try:
        line = first_line.get(timeout=timeout_s)
    except queue.Empty:
        line = None
    prefix = "Serving http://"
    if line is None or not line.startswith(prefix):
        try:
            # stdout closing usually means the process is exiting: give it a moment to be reaped.
            status = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            status = None
        if status is None:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(timeout=10)
        if status is not None:
            problem = f"exited with status {status} before printing 'Serving http://ADDR'"
        elif line is None:
            problem = f"printed nothing within {timeout_s:.0f}s"
        else:
            problem = f"printed {line!r} instead of 'Serving http://ADDR'"
        pytest.fail(f"{name} {problem}; stderr tail:\n{_tail(stderr_log)}", pytrace=False)
    return Server(name, proc, line[len(prefix):].strip().rstrip("/"), stdout_log, stderr_log, group)


def spin_binary() -> str:
    """The Spin CLI: ``SPIN_BIN``, ``spin`` on ``PATH``, or ``../shared/tools/get-spin.sh``."""
    if os.environ.get("SPIN_BIN"):
        return os.environ["SPIN_BIN"]
    found = shutil.which("spin")
    if found:
        return found
    get = REPO.parent / "shared" / "tools" / "get-spin.sh"
    if get.is_file():
        out = subprocess.run([str(get)], capture_output=True, text=True, check=False)
        if out.returncode == 0 and Path(out.stdout.strip()).is_file():
            return out.stdout.strip()
    pytest.fail(f"LUMEN_TEST_RUNTIME={RUNTIME} needs Spin: set SPIN_BIN, put spin on PATH, or provide {get}", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_spin(name: str, env: dict[str, str], log_dir: Path, state_dir: Path, runtime_config: Path | None = None) -> Server:
    """``spin up`` on a free port (Spin cannot report a port it picked); a lost race for the
    port is retried."""
    for attempt in range(3):
        argv = [spin_binary(), "up", "-f", str(REPO / "spin.toml"), "--listen", f"127.0.0.1:{free_port()}", "--state-dir", str(state_dir)]
        if runtime_config is not None:
            argv += ["--runtime-config-file", str(runtime_config)]
        try:
            return spawn_server(name, argv, env, log_dir, HOST_STARTUP_TIMEOUT_S, group=True)
        except pytest.fail.Exception as e:
            if "in use" not in str(e) or attempt == 2:
                raise
    raise AssertionError("unreachable")


class Redis:
    """``redis-server`` on a unix socket in ``directory`` (no TCP port), for the spin-redis runtime."""

    def __init__(self, directory: Path) -> None:
        self.sock = directory / "redis.sock"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--save", "", "--appendonly", "no", "--unixsocket", str(self.sock), "--dir", str(directory)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail("redis-server did not start (apt-get install redis-server)", pytrace=False)
            time.sleep(0.02)
        self.runtime_config = directory / "runtime-config.toml"
        self.runtime_config.write_text(f'[key_value_store.default]\ntype = "redis"\nurl = "redis+unix://{self.sock}"\n')

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@dataclass
class Deployment:
    """The gateway under ``RUNTIME``: ``admin`` takes the admin calls, ``client`` the SDKs'."""

    admin: Server
    client: Server
    servers: list[Server]
    redis: Redis | None = None

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        if self.redis is not None:
            self.redis.stop()


def deploy(name: str, env: dict[str, str], log_dir: Path, state: Path) -> Deployment:
    """Starts the gateway under ``RUNTIME`` with ``env`` (its ``SPIN_VARIABLE_*``)."""
    if RUNTIME not in RUNTIMES:
        pytest.fail(f"LUMEN_TEST_RUNTIME={RUNTIME!r}: expected one of {', '.join(RUNTIMES)}", pytrace=False)
    if RUNTIME == "host":
        argv = [str(BIN_DIR / "lumen-host"), "up", "--listen", "127.0.0.1:0", "--manifest", str(REPO / "spin.toml"), "--state-dir", str(state)]
        s = spawn_server(name, argv, env, log_dir, HOST_STARTUP_TIMEOUT_S)
        return Deployment(s, s, [s])
    if RUNTIME == "spin-sqlite":
        s = spawn_spin(f"{name}-spin", env, log_dir, state)
        return Deployment(s, s, [s])
    redis = Redis(state)
    servers: list[Server] = []
    try:
        for replica in ("a", "b"):
            (state / replica).mkdir()
            servers.append(spawn_spin(f"{name}-spin-{replica}", env, log_dir, state / replica, redis.runtime_config))
    except BaseException:
        for started in servers:
            started.stop()
        redis.stop()
        raise
    return Deployment(servers[0], servers[1], servers, redis)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lumen-logs")


@pytest.fixture(scope="session")
def mock_server(log_dir: Path) -> Iterator[Server]:
    """The mock OpenAI upstream; it requires the upstream key the gateway is configured with."""
    argv = [
        str(BIN_DIR / "lumen-mock"),
        "--listen", "127.0.0.1:0",
        "--api-key", UPSTREAM_KEY,
        "--token-delay-ms", str(MOCK_TOKEN_DELAY_MS),
    ]
    server = spawn_server("lumen-mock", argv, dict(os.environ), log_dir, MOCK_STARTUP_TIMEOUT_S)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def admin_token() -> str:
    return "adm_" + secrets.token_hex(16)


@pytest.fixture(scope="session")
def deployment(mock_server: Server, admin_token: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The gateway serving spin.toml under ``RUNTIME``, with the mock as every upstream."""
    state_dir = tmp_path_factory.mktemp("lumen-state")
    env = gateway_env(mock_server, admin_token)
    d = deploy("lumen-host" if RUNTIME == "host" else "lumen", env, log_dir, state_dir)
    yield d
    d.stop()


def gateway_env(mock_server: Server, admin_token: str) -> dict[str, str]:
    """The environment of a gateway with the mock as every upstream (``SPIN_VARIABLE_*``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPIN_VARIABLE_")}
    env.update(
        SPIN_VARIABLE_ADMIN_TOKEN=admin_token,
        SPIN_VARIABLE_OPENAI_BASE_URL=f"{mock_server.url}/v1",
        # spin.toml allows outbound calls only to this scheme://host:port.
        SPIN_VARIABLE_OPENAI_ALLOWED_HOST=mock_server.url,
        SPIN_VARIABLE_OPENAI_API_KEY=UPSTREAM_KEY,
    )
    # Every other catalog provider points at the mock too: it serves each dialect on its own routes.
    for name, base in [
        ("AZURE", mock_server.url),
        ("ANTHROPIC", f"{mock_server.url}/v1"),
        ("GEMINI", f"{mock_server.url}/v1beta"),
        ("VLLM", f"{mock_server.url}/v1"),
        ("RUNPOD", f"{mock_server.url}/v2/qwen"),
    ]:
        env[f"SPIN_VARIABLE_{name}_BASE_URL"] = base
        env[f"SPIN_VARIABLE_{name}_ALLOWED_HOST"] = mock_server.url
        env[f"SPIN_VARIABLE_{name}_API_KEY"] = UPSTREAM_KEY
    return env


@pytest.fixture(scope="session")
def gateway(deployment: Deployment) -> Server:
    """Where the SDKs call (under spin-redis, the process that did not create their keys)."""
    return deployment.client


@pytest.fixture(scope="session")
def admin(deployment: Deployment, admin_token: str) -> Iterator[httpx.Client]:
    """An httpx client for the gateway's admin API."""
    with httpx.Client(
        base_url=deployment.admin.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
    ) as client:
        yield client


def create_key(admin: httpx.Client, name: str, rpm_limit: int = 100_000, allowed_models: list[str] | None = None) -> dict:
    """Creates a Lumen API key through the admin API and returns the 201 body (with ``key``)."""
    response = admin.post(
        "/admin/keys",
        json={"name": name, "rpm_limit": rpm_limit, "allowed_models": allowed_models or []},
    )
    assert response.status_code == 201, f"POST /admin/keys: {response.status_code} {response.text}"
    body = response.json()
    assert body["key"].startswith("lm_"), body
    return body


@pytest.fixture(scope="session")
def api_key(admin: httpx.Client) -> str:
    """A key with a generous rate limit, shared by the tests that don't need their own."""
    return create_key(admin, "python-sdk-tests")["key"]


def sdk_client(gateway: Server, key: str) -> OpenAI:
    """The unmodified OpenAI SDK pointed at the gateway; retries off so every status is visible."""
    return OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture()
def client(gateway: Server, api_key: str) -> Iterator[OpenAI]:
    with sdk_client(gateway, api_key) as c:
        yield c


@pytest.fixture(scope="session")
def mock_http(mock_server: Server) -> Iterator[httpx.Client]:
    """An httpx client for the mock's ``/mock/*`` inspection endpoints."""
    with httpx.Client(base_url=mock_server.url, timeout=30) as c:
        yield c


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"lumen binaries: {BIN_DIR}", f"runtime (LUMEN_TEST_RUNTIME): {RUNTIME}"]
