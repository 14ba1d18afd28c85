"""Real servers for backend tests: redis-server (plain, TLS-only with a throwaway CA, and a
3-master Redis Cluster, plain or TLS-only), PostgreSQL 15 and moto's S3 server.

Each fixture starts the real program on a free loopback port in its own temp dir, waits until it
answers (PING, ``pg_isready``, an HTTP request), and stops it at the end of the session. Tests
share one server per session and keep apart by naming: a key prefix, a database, a bucket of their
own. A test that needs to break a server (SIGKILL) asks ``redis_factory`` for a private one.

A server program that is not installed skips the test with the reason, except in CI (``CI=true``)
where it fails it: CI must never go green by skipping the backends. ``make test`` installs them.

Loaded by ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

READY_TIMEOUT_S = 60.0  # generous: the machine is shared and may be slow
POSTGRES_BIN_DIRS = ["/usr/lib/postgresql/15/bin"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_server(reason: str) -> None:
    """Skip the test, or fail it in CI, where every backend must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: backend tests must not skip)", pytrace=False)
    pytest.skip(reason)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(ready: Callable[[], bool], what: str, log: Path, proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer within {READY_TIMEOUT_S:.0f} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


# -- Redis ---------------------------------------------------------------------------------------


def _redis_pong(port: int, password: str | None, ca: Path | None = None) -> bool:
    """True when redis-server answers PING (after AUTH when it has a password); over TLS,
    trusting ``ca``, when given."""

    def command(*parts: str) -> bytes:
        out = f"*{len(parts)}\r\n".encode()
        for p in parts:
            out += f"${len(p.encode())}\r\n{p}\r\n".encode()
        return out

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as plain:
            s = plain
            if ca is not None:
                s = ssl.create_default_context(cafile=str(ca)).wrap_socket(
                    plain, server_hostname="127.0.0.1"
                )
            s.settimeout(1)
            if password is not None:
                s.sendall(command("AUTH", password))
                if not s.recv(256).startswith(b"+OK"):
                    return False
            s.sendall(command("PING"))
            return s.recv(256).startswith(b"+PONG")  # -LOADING while it loads a dataset
    except OSError:
        return False


@dataclass
class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """Generate a CA and a server certificate for IP 127.0.0.1 with the ``openssl`` command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing_server("openssl is not installed (Debian package openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr = folder / "server.crt", folder / "server.key", folder / "server.csr"
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "2", "-subj", "/CN=contextkit test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", folder / "san.ext"],
    ):  # fmt: skip
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)
    return TlsFiles(ca, cert, key)


@dataclass
class RedisServer:
    """One redis-server process without persistence: a restart starts it empty. With ``tls``
    it listens for TLS only (``rediss://``; the URL names the CA to trust)."""

    binary: str
    dir: Path
    port: int = field(default_factory=free_port)
    password: str | None = None
    proc: subprocess.Popen | None = None
    tls: TlsFiles | None = None
    cluster: bool = False  # a Redis Cluster node (see ``redis_cluster``)
    bus_port: int = field(default_factory=free_port)  # the cluster bus (kept over restarts)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def start(self) -> None:
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                      "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                      "--tls-ca-cert-file", str(self.tls.ca)]  # fmt: skip
        args = [
            self.binary,
            *listen,
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--logfile", str(self.log),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
                     "--cluster-config-file", str(self.dir / "nodes.conf")]  # fmt: skip
            if self.tls is not None:  # the cluster bus over TLS too, as production would
                args += ["--tls-cluster", "yes"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        ca = self.tls.ca if self.tls is not None else None
        answers = lambda: _redis_pong(self.port, self.password, ca)  # noqa: E731
        _wait(answers, "redis-server", self.log, self.proc)

    def kill(self) -> None:
        """SIGKILL: the server dies at once and loses every write (no persistence)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=15)

    def restart(self) -> None:
        """Start again on the same port (empty), after :meth:`kill` or :meth:`stop`."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        missing_server("redis-server is not installed (Debian package redis-server)")
    return binary  # type: ignore[return-value]


@pytest.fixture(scope="session")
def redis_factory(tmp_path_factory) -> Iterator[Callable[..., RedisServer]]:
    """Start a private redis-server: ``redis_factory(password=None, tls=False)``; all stop at
    the end."""
    started: list[RedisServer] = []

    def start(password: str | None = None, tls: bool = False) -> RedisServer:
        folder = tmp_path_factory.mktemp("redis")
        files = make_tls_files(folder / "tls") if tls else None
        server = RedisServer(_redis_binary(), folder, password=password, tls=files)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(redis_factory) -> RedisServer:
    """The session's shared redis-server, with a password (so URLs carry one to mask)."""
    return redis_factory(password="s3cret-" + uuid.uuid4().hex[:8])


@pytest.fixture(scope="session")
def redis_tls_server(redis_factory) -> RedisServer:
    """A redis-server that speaks TLS only (a throwaway CA and certificate), with a password."""
    return redis_factory(password="s3cret-" + uuid.uuid4().hex[:8], tls=True)


@dataclass
class RedisCluster:
    """Redis Cluster: three masters (no replicas), every slot assigned and the state ``ok``.
    With TLS (``tls``) every node listens for TLS only and the cluster bus runs over TLS."""

    nodes: list[RedisServer]
    cli: str = "redis-cli"
    tls: TlsFiles | None = None

    @property
    def url(self) -> str:
        """A plain ``redis://`` (or ``rediss://``) URL of the first master (what a single-node
        client would use)."""
        return self.nodes[0].url

    @property
    def cluster_url(self) -> str:
        """The ``redis+cluster://`` (``rediss+cluster://``) URL the online store takes."""
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}+cluster://{rest}"

    def redis_cli(self, port: int, *args: str, check: bool = True) -> str:
        """Run ``redis-cli`` against the node on ``port`` (over TLS when the cluster uses it);
        returns its output."""
        tls = ["--tls", "--cacert", str(self.tls.ca)] if self.tls is not None else []
        done = subprocess.run(
            [self.cli, *tls, "-p", str(port), *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def is_ok(self) -> bool:
        """Whether every node says ``cluster_state:ok`` (all slots served)."""
        return all(
            "cluster_state:ok" in self.redis_cli(n.port, "cluster", "info", check=False)
            for n in self.nodes
        )

    def wait_ok(self) -> None:
        """Wait until :meth:`is_ok` (after a start or a node's restart)."""
        _wait(self.is_ok, "redis cluster", self.nodes[0].log, None)

    def owner(self, slot: int) -> RedisServer:
        """The master that serves ``slot`` now (as the first node's slot map says)."""
        import redis

        with redis.Redis.from_url(self.nodes[0].url) as client:
            for start, end, (_host, port, *_rest), *_replicas in client.execute_command(
                "CLUSTER", "SLOTS"
            ):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no master serves slot {slot}")

    # A resharding, step by step (what ``redis-cli --cluster reshard`` does per slot), so a
    # test can drive it at a known point: begin, move keys (some, then the rest), end.

    def begin_migration(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """``slot`` IMPORTING on ``target``, MIGRATING on ``source``: from now on the source
        answers ASK for a key it does not hold, TRYAGAIN for a multi-key command over keys
        split between the two."""
        import redis

        ids = {n.port: self._node_id(n) for n in (source, target)}
        with redis.Redis.from_url(target.url) as t, redis.Redis.from_url(source.url) as s:
            t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
            s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])

    def migrate_keys(
        self, slot: int, source: RedisServer, target: RedisServer, count: int | None = None
    ) -> int:
        """MIGRATE ``count`` of the keys (all by default) the source holds in ``slot`` to the
        target; returns how many moved."""
        import redis

        with redis.Redis.from_url(source.url) as s:
            keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, count or 100_000)
            if keys:
                s.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 10_000, "KEYS", *keys)
        return len(keys)

    def end_migration(self, slot: int, target: RedisServer) -> None:
        """``slot`` belongs to ``target`` now, on every master (the source's keys must have
        moved): a client with the old slot map gets MOVED."""
        import redis

        target_id = self._node_id(target)
        for node in sorted(self.nodes, key=lambda n: n is not target):  # the target first
            with redis.Redis.from_url(node.url) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def _node_id(self, node: RedisServer) -> str:
        return self.redis_cli(node.port, "cluster", "myid").strip()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_redis_cluster(
    folder: Callable[[], Path], masters: int = 3, tls: bool = False
) -> RedisCluster:
    """Start ``masters`` cluster-enabled redis-servers (each in ``folder()``; TLS only with
    ``tls``, one throwaway CA for all) and join them with ``redis-cli --cluster create``;
    returns once every node says ``cluster_state:ok``."""
    binary, cli = _redis_binary(), shutil.which("redis-cli")
    if cli is None:
        missing_server("redis-cli is not installed (Debian package redis-tools)")
    files = make_tls_files(folder() / "tls") if tls else None
    cluster = RedisCluster(
        [RedisServer(binary, folder(), cluster=True, tls=files) for _ in range(masters)],
        cli=cli,  # type: ignore[arg-type]
        tls=files,
    )
    try:
        for node in cluster.nodes:
            node.start()
        cluster.redis_cli(
            cluster.nodes[0].port, "--cluster", "create",
            *(f"127.0.0.1:{n.port}" for n in cluster.nodes),
            "--cluster-replicas", "0", "--cluster-yes",
        )  # fmt: skip
        cluster.wait_ok()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    """The session's 3-master Redis Cluster on loopback (tests keep apart by key prefix)."""
    cluster = start_redis_cluster(lambda: tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_tls_cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    """The session's 3-master Redis Cluster that speaks TLS only (clients and cluster bus),
    its certificates from a throwaway CA: ``rediss+cluster://...?ssl_ca_certs=...``."""
    cluster = start_redis_cluster(lambda: tmp_path_factory.mktemp("redis-cluster"), tls=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_factory(tmp_path_factory) -> Iterator[Callable[..., RedisCluster]]:
    """A private 3-master cluster (``tls=True``: TLS only), for a test that kills a node or
    moves slots; all stop at the end."""
    started: list[RedisCluster] = []

    def start(tls: bool = False) -> RedisCluster:
        cluster = start_redis_cluster(lambda: tmp_path_factory.mktemp("redis-cluster"), tls=tls)
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


# -- PostgreSQL ----------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    for candidate in POSTGRES_BIN_DIRS:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class PostgresServer:
    """A throwaway cluster: user ``ck`` with trust auth on 127.0.0.1."""

    bin: Path
    dir: Path
    port: int = field(default_factory=free_port)
    user: str = "ck"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = list(args)
        if os.geteuid() == 0:  # postgres refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, check=False, cwd=self.dir
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done

    def start(self) -> None:
        data = self.dir / "data"
        if not data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", self.user,
                      "--no-sync", "-E", "UTF8")  # fmt: skip
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "pg.log"),
                  "-o", options, "-w", "-t", str(int(READY_TIMEOUT_S)), "start")  # fmt: skip
        isready = [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                   "-U", self.user]  # fmt: skip
        _wait(
            lambda: subprocess.run(isready, capture_output=True, check=False).returncode == 0,
            "postgres",
            self.dir / "pg.log",
            None,
        )

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        name = name or "t_" + uuid.uuid4().hex[:12]
        self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  self.user, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
                  f'CREATE DATABASE "{name}"')  # fmt: skip
        return self.url(name)

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w",
                  "stop", check=False)  # fmt: skip


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL 15 cluster; ``create_database()`` gives each test its own db."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        missing_server("PostgreSQL is not installed (Debian package postgresql: initdb, pg_ctl)")
    # Not under pytest's tmp dirs: their parents are private to root, and postgres runs as the
    # postgres user when we are root.
    root = Path(tempfile.mkdtemp(prefix="ck-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
    server = PostgresServer(bin_dir, root)  # type: ignore[arg-type]
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- S3 (moto) -----------------------------------------------------------------------------------


@dataclass
class S3Server:
    """moto's standalone server as an S3-compatible endpoint."""

    binary: str
    dir: Path
    port: int = field(default_factory=free_port)
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2) as response:
                return response.status < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def start(self) -> None:
        log = self.dir / "moto.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait(self._answers, "moto_server", log, self.proc)

    def create_bucket(self, name: str | None = None) -> str:
        """A new empty bucket (names need 3+ characters); returns its name."""
        import boto3

        name = name or "ck-" + uuid.uuid4().hex[:12]
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        ).create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


def _moto_binary() -> str | None:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """The session's moto S3 server; ``create_bucket()`` gives each test its own bucket."""
    binary = _moto_binary()
    if binary is None:
        missing_server('moto_server is not installed (pip install "moto[server]")')
    server = S3Server(binary, tmp_path_factory.mktemp("s3"))  # type: ignore[arg-type]
    try:
        server.start()
        yield server
    finally:
        server.stop()
