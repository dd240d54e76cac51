"""A process under test that must not take the machine with it: a memory ceiling, and its peak memory read back.

Where the kernel lets the tests make one (root, with a cgroup memory controller), the process runs in its own
memory cgroup, so the kernel stops it at the ceiling however fast it allocates; in every case a watchdog thread
reads the resident memory of the whole process tree a few hundred times a second and kills it past the ceiling.
A hostile request that would make the service allocate gigabytes then fails its test, instead of starting the
machine's out-of-memory killer on whatever else runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MIB = 1024 * 1024


def _memory_cgroup_root() -> Path | None:
    """This process's cgroup directory with a memory controller (v1 or v2), if it can hold a child we write."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            root = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            if (root / "memory.limit_in_bytes").exists() or root.is_dir():
                return root
    for line in lines:
        if line.startswith("0::"):
            for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                unified = mount / line[3:].lstrip("/")
                enabled = unified / "cgroup.subtree_control"
                if enabled.exists() and "memory" in enabled.read_text().split():
                    return unified
    return None


@dataclass
class Ceiling:
    """A memory ceiling for one process tree: ``watch(pid)`` puts it in force."""

    limit_bytes: int
    name: str = "trainserve-test"
    killed: bool = False
    peak_bytes: int = 0
    _cgroup: Path | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, pid: int) -> None:
        self._cgroup = self._make_cgroup(pid)
        self._thread = threading.Thread(target=self._watchdog, args=(pid,), daemon=True, name="memory-watchdog")
        self._thread.start()

    def _make_cgroup(self, pid: int) -> Path | None:
        root = _memory_cgroup_root()
        if root is None:
            return None
        group = root / f"{self.name}-{os.getpid()}-{pid}"
        try:
            group.mkdir()
            if (group / "memory.limit_in_bytes").exists():  # cgroup v1
                with contextlib.suppress(OSError):  # the memory the process holds already moves with it
                    (group / "memory.move_charge_at_immigrate").write_text("3")
                (group / "memory.limit_in_bytes").write_text(str(self.limit_bytes))
                with contextlib.suppress(OSError):  # no swap either, where the kernel accounts it
                    (group / "memory.memsw.limit_in_bytes").write_text(str(self.limit_bytes))
            else:  # cgroup v2
                (group / "memory.max").write_text(str(self.limit_bytes))
                with contextlib.suppress(OSError):
                    (group / "memory.swap.max").write_text("0")
            (group / "cgroup.procs").write_text(str(pid))
        except OSError:
            with contextlib.suppress(OSError):
                group.rmdir()
            return None
        return group

    def _watchdog(self, pid: int) -> None:
        try:
            process = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.wait(0.003):
            try:
                rss = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
            except psutil.NoSuchProcess:
                return
            self.peak_bytes = max(self.peak_bytes, rss)
            if rss > self.limit_bytes:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                return

    def oom_killed(self) -> bool:
        """Whether the process tree was stopped at the ceiling (by the watchdog or the kernel)."""
        if self.killed:
            return True
        if self._cgroup is not None:
            for name in ("memory.failcnt", "memory.events"):
                with contextlib.suppress(OSError):
                    text = (self._cgroup / name).read_text()
                    if name == "memory.failcnt":
                        return int(text) > 0 and not self._alive()
                    return "oom_kill 0" not in text
        return False

    def _alive(self) -> bool:
        if self._cgroup is None:
            return False
        with contextlib.suppress(OSError):
            return bool((self._cgroup / "cgroup.procs").read_text().split())
        return False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._cgroup is not None:
            # Whatever still runs (the process is often stopped after its ceiling is lifted) leaves the group for
            # its parent's, so that the group can go now rather than when the process ends.
            with contextlib.suppress(OSError):
                for pid in (self._cgroup / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        (self._cgroup.parent / "cgroup.procs").write_text(pid)
            deadline = time.monotonic() + 10
            while self._alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(OSError):
                self._cgroup.rmdir()


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak since the last reset) and the other sizes of /proc/<pid>/status, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[key] = int(parts[0])
    return values


class PeakMemory:
    """How far a process's resident memory rose above where it was, while the ``with`` block ran."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before_kib = 0
        self.peak_kib = 0

    def __enter__(self) -> PeakMemory:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
        self.before_kib = status_kib(self.pid)["VmRSS"]
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            self.peak_kib = status_kib(self.pid)["VmHWM"]

    @property
    def growth_mib(self) -> float:
        return max(0, self.peak_kib - self.before_kib) / 1024


@contextlib.contextmanager
def ceiling(process: subprocess.Popen[bytes], limit_bytes: int) -> Iterator[Ceiling]:
    bound = Ceiling(limit_bytes)
    bound.watch(process.pid)
    try:
        yield bound
    finally:
        bound.close()
