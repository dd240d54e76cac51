"""Several hosts on one machine: Linux network namespaces joined by a bridge, each with its own address, its own
host name (a UTS namespace of its own) and its own data directory, sharing nothing but the network.

``Network`` makes the bridge and the hosts and cuts or restores a host's link; ``Host.start`` runs a command on a
host; ``ServiceCluster`` puts TrainServe on them: one host with Redis, PostgreSQL and an S3-compatible object store
(the test's own servers, bound to that host's address), API hosts and worker hosts, every store an ``s3://`` URL.
Needs root and iproute2 (``ip``) and util-linux (``unshare``); ``skip_reason`` says what is missing.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.embedded import redis_server_binary, stop_process

REDIS_PORT = 6379
POSTGRES_PORT = 5432
S3_PORT = 5000
API_PORT = 8000
BUCKET = "trainserve"
# The object store's credentials: the emulator takes any.
S3_ENV = {"AWS_ACCESS_KEY_ID": "trainserve", "AWS_SECRET_ACCESS_KEY": "trainserve", "AWS_DEFAULT_REGION": "us-east-1"}


def skip_reason() -> str | None:
    """Why hosts cannot be made here, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    for tool in ("ip", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return None


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    link: str  # the bridge's end of the host's cable: down is a cut cable
    home: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, command: Sequence[str], env: dict[str, str], log: Path, user: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Run ``command`` on this host (its network, its host name), in a process group of its own."""
        prefix = ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"']
        # setpriv execs the command (runuser would stay its parent, and kill it on a signal meant for it).
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] if user else []
        with log.open("ab") as out:
            process = subprocess.Popen(
                [*prefix, self.name, *as_user, *command],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        stop_process(process, grace)
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.processes)):
            self.stop(process, grace=5.0)


class Network:
    """A bridge and hosts on it, in 10.(200+x).y.0/24; the machine itself is .254 on the bridge, to reach them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        tag = os.getpid() % 100_000
        self.prefix = f"ts{tag}"
        self.bridge = f"tsbr{tag}"
        self.subnet = f"10.{200 + tag % 50}.{tag // 50 % 250}"
        self.hosts: dict[str, Host] = {}
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def add(self, name: str) -> Host:
        number = len(self.hosts) + 1
        namespace, outside, inside = f"{self.prefix}-{name}", f"{self.prefix}h{number}o", f"{self.prefix}h{number}i"
        address = f"{self.subnet}.{number}"
        _run("ip", "netns", "add", namespace)
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        _run("ip", "link", "set", inside, "netns", namespace)
        _run("ip", "link", "set", outside, "master", self.bridge, "up")
        _run("ip", "netns", "exec", namespace, "ip", "addr", "add", f"{address}/24", "dev", inside)
        _run("ip", "netns", "exec", namespace, "ip", "link", "set", inside, "up")
        _run("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        host = self.hosts[name] = Host(name, namespace, address, outside, home)
        return host

    def cut(self, host: Host) -> None:
        """Unplug the host's cable: nothing reaches it, nothing leaves it; its connections hang as on a real cut."""
        _run("ip", "link", "set", host.link, "down")

    def restore(self, host: Host) -> None:
        _run("ip", "link", "set", host.link, "up")

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop_all()
        for host in self.hosts.values():
            with suppress(subprocess.CalledProcessError):
                _run("ip", "netns", "del", host.namespace)
        with suppress(subprocess.CalledProcessError):
            _run("ip", "link", "del", self.bridge)


def wait_for(
    check: Callable[[], bool], what: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")
        time.sleep(0.2)


def _port_open(address: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((address, port)) == 0


class ServiceCluster:
    """TrainServe across hosts: ``infra`` (Redis, PostgreSQL, the object store), API hosts and worker hosts."""

    def __init__(
        self,
        root: Path,
        *,
        apis: int = 2,
        workers: int = 2,
        lease_seconds: float = 6,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.net = Network(root / "hosts")
        self.extra = settings or {}
        self.lease_seconds = lease_seconds
        self.infra = self.net.add("infra")
        self.api_hosts = [self.net.add(f"api{i + 1}") for i in range(apis)]
        self.worker_hosts = [self.net.add(f"worker{i + 1}") for i in range(workers)]
        self.redis: subprocess.Popen[bytes] | None = None
        self.postgres: subprocess.Popen[bytes] | None = None
        self.apis: dict[str, subprocess.Popen[bytes]] = {}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.pgdata = self.infra.home / "pgdata"

    # --- the infrastructure host ---------------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg2://postgres@{self.infra.address}:{POSTGRES_PORT}/trainserve"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.infra.address}:{REDIS_PORT}/0"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.infra.address}:{S3_PORT}"

    def start_infra(self) -> None:
        self.start_redis()
        self.start_object_store()
        self.init_postgres()
        self.start_postgres()

    def start_redis(self) -> None:
        """A Redis that keeps nothing: a restart of its host loses every message, as a host without its disk."""
        data = self.infra.home / "redis"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        command = [
            redis_server_binary(),
            *("--bind", self.infra.address, "--port", str(REDIS_PORT), "--dir", str(data)),
            *("--save", "", "--appendonly", "no", "--protected-mode", "no"),
        ]
        self.redis = self.infra.start(command, dict(os.environ), self.root / "redis.log")
        wait_for(lambda: _port_open(self.infra.address, REDIS_PORT), "redis", process=self.redis)

    def stop_redis(self) -> None:
        if self.redis is not None:
            self.infra.stop(self.redis)
            self.redis = None

    def start_object_store(self) -> None:
        """The one part that cannot run here for real: an S3-compatible emulator (moto's server) stands in for S3
        or MinIO, serving the S3 REST API over HTTP as they do."""
        command = [sys.executable, "-m", "moto.server", "-H", self.infra.address, "-p", str(S3_PORT)]
        process = self.infra.start(command, dict(os.environ), self.root / "s3.log")
        wait_for(lambda: _port_open(self.infra.address, S3_PORT), "the object store", process=process)
        import boto3

        boto3.client("s3", endpoint_url=self.s3_endpoint, **_boto_credentials()).create_bucket(Bucket=BUCKET)

    def init_postgres(self) -> None:
        """A new database cluster, made with the pgserver wheel's PostgreSQL (which runs as its own user), that
        takes connections from the other hosts."""
        pgserver: Any = importlib.import_module("pgserver")
        server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        server.psql("CREATE DATABASE trainserve;")
        server.cleanup()
        with (self.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.net.subnet}.0/24 trust\n")

    def start_postgres(self) -> None:
        binary = Path(importlib.import_module("pgserver").__file__ or "").parent / "pginstall" / "bin" / "postgres"
        sockets = self.infra.home / "pgsockets"
        sockets.mkdir(exist_ok=True)
        shutil.chown(sockets, "pgserver", "pgserver")
        command = [
            str(binary),
            *("-D", str(self.pgdata), "-p", str(POSTGRES_PORT), "-k", str(sockets)),
            *("-c", f"listen_addresses={self.infra.address}"),
        ]
        self.postgres = self.infra.start(command, dict(os.environ), self.root / "postgres.log", user="pgserver")
        wait_for(lambda: _port_open(self.infra.address, POSTGRES_PORT), "postgres", process=self.postgres)

    def stop_postgres(self) -> None:
        """A fast shutdown (SIGINT): clients are disconnected, as by a restart of the database's host."""
        if self.postgres is not None:
            self.postgres.send_signal(signal.SIGINT)  # the postmaster itself: every command before it exec'ed it
            self.postgres.wait(30)
            self.infra.stop(self.postgres)
            self.postgres = None

    # --- TrainServe ----------------------------------------------------------------------------------------------

    def env(self, host: Host) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINSERVE_", "AWS_"))}
        env |= S3_ENV | {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "TRAINSERVE_HOME": str(host.home / "trainserve"),
            "TRAINSERVE_DATABASE_URL": self.database_url,
            "TRAINSERVE_REDIS_URL": self.redis_url,
            "TRAINSERVE_MODEL_STORE": f"s3://{BUCKET}/models",
            "TRAINSERVE_DATASET_STORE": f"s3://{BUCKET}/datasets",
            "TRAINSERVE_QUEUE": "cluster",
            "TRAINSERVE_LEASE_SECONDS": str(self.lease_seconds),
            "TRAINSERVE_RECONCILE_INTERVAL": "0.5",
            "TRAINSERVE_LOG_LEVEL": "INFO",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        return env | self.extra

    def api_url(self, host: Host) -> str:
        return f"http://{host.address}:{API_PORT}"

    def start_api(self, host: Host) -> None:
        command = [sys.executable, "-m", "service.cli", "api", "--host", host.address, "--port", str(API_PORT)]
        process = host.start(command, self.env(host), self.root / f"{host.name}.log")
        self.apis[host.name] = process
        wait_for(
            lambda: httpx.get(f"{self.api_url(host)}/readyz", timeout=2).status_code == 200,
            f"the API on {host.name}",
            timeout=120,
            process=process,
        )

    def start_worker(self, host: Host, *options: str) -> None:
        command = [sys.executable, "-m", "service.cli", "worker", *options]
        log = self.root / f"{host.name}.log"
        offset = log.stat().st_size if log.exists() else 0
        process = host.start(command, self.env(host), log)
        self.workers[host.name] = process

        def ready() -> bool:
            with log.open("rb") as f:
                f.seek(offset)
                return b" ready." in f.read()

        wait_for(ready, f"the worker on {host.name}", timeout=120, process=process)

    def stop_worker(self, host: Host) -> None:
        host.stop(self.workers.pop(host.name))

    def start(self) -> None:
        self.start_infra()
        for host in self.api_hosts:
            self.start_api(host)  # one at a time: the first applies the migrations
        for host in self.worker_hosts:
            self.start_worker(host)

    def log(self, host: Host) -> str:
        return (self.root / f"{host.name}.log").read_text(errors="replace")

    def close(self) -> None:
        self.net.close()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def s3_client(cluster: ServiceCluster) -> object:
    """A client of the cluster's object store, from the machine itself."""
    import boto3

    return boto3.client("s3", endpoint_url=cluster.s3_endpoint, **_boto_credentials())
