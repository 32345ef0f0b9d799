"""Peak RSS and CPU time of every stack process, read from /proc (children included).

A background thread polls each stack process and all its descendants (the
dispatcher pool's forked workers, PostgreSQL's backends). It keeps the highest
VmHWM (the kernel's own peak-RSS mark, so a spike between two polls is not
missed) per process label. CPU seconds are summed per label between `mark()`
calls, from utime + stime in /proc/<pid>/stat.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class ProcStat:
    """The few fields of /proc/<pid>/stat we need."""

    pid: int
    ppid: int
    comm: str
    cpu_seconds: float


def read_stat(pid: int) -> ProcStat | None:
    """/proc/<pid>/stat parsed, or None if the process is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may itself contain spaces or parentheses.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return ProcStat(pid, int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)


def status_kib(pid: int, *names: str) -> dict[str, int]:
    """The named memory fields of /proc/<pid>/status (VmHWM, VmRSS, RssShmem, ...) in KiB; 0 for a field not
    found or a process gone."""
    found = dict.fromkeys(names, 0)
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            name, *value = line.split()
            if name.removesuffix(":") in found:
                found[name.removesuffix(":")] = int(value[0])
    except OSError:
        pass
    return found


def read_hwm_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) in KiB, 0 if unknown."""
    return status_kib(pid, "VmHWM")["VmHWM"]


def all_stats() -> dict[int, ProcStat]:
    """Every live process."""
    stats = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def labelled_tree(roots: dict[str, int]) -> dict[int, tuple[str, ProcStat]]:
    """Each root process and all its descendants, labelled `name` or `name/child`."""
    stats = all_stats()
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    tree: dict[int, tuple[str, ProcStat]] = {}
    for name, root in roots.items():
        if root not in stats:
            continue
        tree[root] = (name, stats[root])
        pending = list(children.get(root, []))
        while pending:
            pid = pending.pop()
            tree[pid] = (f"{name}/child", stats[pid])
            pending.extend(children.get(pid, []))
    return tree


class Every:
    """Calls `step` every `seconds` on a daemon thread of its own, from `start()` until `stop()`; a step that raises
    is reported and skipped (a missed sample only thins a series)."""

    def __init__(self, name: str, seconds: float, step: Callable[[], None]) -> None:
        self._step = step
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                self._step()
            except Exception as error:  # noqa: BLE001 - see the class's docstring
                print(f"  {self._thread.name}: {error!r}", flush=True)
            if self._stop.wait(self._seconds):
                return


class ProcessMonitor:
    """Polls the stack's process trees; `roots()` returns {name: pid} of the processes to watch."""

    def __init__(self, roots: Callable[[], dict[str, int]]) -> None:
        self._roots = roots
        self._peak_kib: dict[str, int] = {}
        self._lock = threading.Lock()
        self._polls = Every("rss-monitor", POLL_SECONDS, self.poll)
        self._cpu_mark: dict[int, tuple[str, float]] = {}

    def start(self) -> None:
        """Begin polling."""
        self._polls.start()

    def stop(self) -> None:
        """Stop polling."""
        self._polls.stop()

    def poll(self) -> None:
        """Record the current VmHWM of every watched process."""
        tree = labelled_tree(self._roots())
        with self._lock:
            for pid, (label, _) in tree.items():
                kib = read_hwm_kib(pid)
                if kib > self._peak_kib.get(label, 0):
                    self._peak_kib[label] = kib

    def reset_peaks(self) -> None:
        """Forget peaks so far and reset each process's VmHWM (`echo 5 > clear_refs`), where allowed."""
        with self._lock:
            for pid in labelled_tree(self._roots()):
                with contextlib.suppress(OSError):
                    (PROC / str(pid) / "clear_refs").write_text("5")
            self._peak_kib.clear()
        self.poll()

    def peak_rss_mib(self) -> dict[str, float]:
        """Peak RSS per process label since the last reset, MiB."""
        self.poll()
        with self._lock:
            return {label: round(kib / 1024, 1) for label, kib in sorted(self._peak_kib.items())}

    def mark_cpu(self) -> None:
        """Start a CPU-time window."""
        self._cpu_mark = {pid: (label, stat.cpu_seconds) for pid, (label, stat) in labelled_tree(self._roots()).items()}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used per label since `mark_cpu()` by the processes alive now."""
        used: dict[str, float] = {}
        for pid, (label, stat) in labelled_tree(self._roots()).items():
            before = self._cpu_mark[pid][1] if pid in self._cpu_mark else 0.0  # born inside the window
            used[label] = used.get(label, 0.0) + stat.cpu_seconds - before
        return {label: round(seconds, 1) for label, seconds in sorted(used.items())}
