"""py-spy profiles of stack processes while a scenario runs, summarised as text.

`py-spy record --nonblocking --format raw` writes collapsed stacks ("frame;frame;... count",
each frame "function (file:line)"). The summary lists, as a share of all non-idle samples:
the frames with the most self time, the frames with the most inclusive time, and the
inclusive time per top-level package (pymongo, grpc, rq, ...).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<location>[^()]*)\)$")
TOP = 25
RATE = 100


def py_spy() -> str:
    """The py-spy executable of this environment (`uv add --group bench py-spy`)."""
    from bench.harness.tools import venv_tool

    return venv_tool("py-spy")


class Profiler:
    """Records one process (and, with `subprocesses`, its children) for `seconds` in the background.

    `gil=True` samples only the thread holding the GIL: where the Python CPU time goes (a Python
    process cannot use more than one core of it). `gil=False` samples every thread py-spy does not
    see as idle, which here includes threads blocked on sockets: where the wall time of a job goes.
    """

    def __init__(self, pid: int, seconds: float, output: Path, subprocesses: bool, gil: bool) -> None:
        self.output = output
        self.gil = gil
        output.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            py_spy(),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(RATE),
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(output),
        ]
        if subprocesses:
            argv.append("--subprocesses")
        if gil:
            argv.append("--gil")
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait(self) -> str:
        """Wait for py-spy to finish; return the summary text (also written beside the raw file)."""
        _, stderr = self.process.communicate(timeout=120)
        if not self.output.exists():
            return f"py-spy wrote nothing: {stderr.decode(errors='replace')[-500:]}"
        summary = summarise(self.output.read_text(), "GIL-holding" if self.gil else "non-idle")
        self.output.with_suffix(".txt").write_text(summary)
        return summary


def _short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    location = match["location"]
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in location:
            location = location.split(marker, 1)[1]
    return f"{match['function']} ({location})"


def _package(frame: str) -> str:
    match = FRAME.match(frame)
    location = match["location"] if match else frame
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in location:
            location = location.split(marker, 1)[1]
    return location.split("/", 1)[0].split(".py", 1)[0].split(":", 1)[0]


def summarise(raw: str, kind: str = "non-idle") -> str:
    """Self, inclusive and per-package shares of the samples in a py-spy raw (collapsed) profile."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";") if not frame.startswith("process ")]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        # The package the leaf's time is spent in, skipping the interpreter's own frames.
        packages[_package(stack.split(";")[-1])] += count
    if not total:
        return "no samples\n"

    def table(title: str, counter: Counter[str]) -> list[str]:
        rows = [f"{title} (share of {total} {kind} samples at {RATE} Hz = {total / RATE:.1f} s)"]
        rows += [f"  {100 * count / total:5.1f}%  {name}" for name, count in counter.most_common(TOP)]
        return rows

    lines = table("self time", self_time) + [""] + table("inclusive time", inclusive)
    lines += [""] + table("self time by package/module", packages)
    return "\n".join(lines) + "\n"


def available() -> bool:
    """Whether py-spy is installed in this environment."""
    try:
        return shutil.which(py_spy()) is not None
    except FileNotFoundError:
        return False
