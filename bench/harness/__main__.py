"""`python -m bench.harness [--scenario NAME] [--profile] [--quick] [--set SIZE=VALUE ...]` (what `make bench` runs)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import report
from bench.harness.scenarios import GROUP_RUNNERS, GROUPS, SCENARIOS, Bench, Plan, say
from bench.harness.tools import require_load_tools
from devstack.processes import ROOT

RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__)
    parser.add_argument("--scenario", default="", help=f"one of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after measuring, profile the hot processes with py-spy (bench/results/profiles/)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke test, numbers meaningless, nothing written"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SIZE=VALUE",
        help="override one of the plan's sizes (a field of scenarios.Plan), e.g. --set webhook_tasks=5000",
    )
    args = parser.parse_args()
    # A SIGTERM unwinds like Ctrl-C does, so every stack started so far is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.scenario and args.scenario not in SCENARIOS:
        parser.error(f"unknown scenario {args.scenario!r}; choose from {', '.join(SCENARIOS)}")
    selected = {args.scenario} if args.scenario else set(SCENARIOS)
    wrk_path, ghz_path = require_load_tools()
    profile_dir = None
    if args.profile:
        profile_dir = Path(tempfile.mkdtemp(prefix="aitask-bench-profiles-")) if args.quick else RESULTS / "profiles"
    plan = Plan.quick() if args.quick else Plan()
    try:
        plan = plan.with_sizes(args.set)
    except ValueError as error:
        parser.error(str(error))
    bench = Bench(wrk_path, ghz_path, plan, profile_dir)

    started = time.monotonic()
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "revision": report.revision(),
        "loadavg_at_start": [round(value, 2) for value in os.getloadavg()],
        "plan": vars(bench.plan) | {"quick": args.quick},
    }
    for group, members in GROUPS.items():
        chosen = selected & set(members)
        if not chosen:
            continue
        say(f"[{group}] {', '.join(sorted(chosen))}")
        try:
            GROUP_RUNNERS[group](bench, chosen)
        except Exception as error:  # noqa: BLE001 - one broken group must not lose the others' numbers
            traceback.print_exc()
            for name in chosen:
                bench.results.setdefault(name, {})["error"] = f"{type(error).__name__}: {error}"
    meta |= {
        "loadavg_at_end": [round(value, 2) for value in os.getloadavg()],
        "duration_s": round(time.monotonic() - started, 1),
    }

    results = {name: bench.results[name] for name in SCENARIOS if name in bench.results}
    report.finalize(results)
    say("")
    say(report.table(results))
    scaling = results.get("scaling", {})
    if scaling.get("curve"):
        say("")
        say(report.scaling_curve(scaling["curve"]))
    for name, summary in bench.profiles.items():
        say(f"\n--- py-spy profile: {name} ---\n" + "\n".join(summary.splitlines()[:20]))
    if args.quick:
        say("\n(--quick: no results written" + (f"; profiles in {profile_dir})" if profile_dir else ")"))
    else:
        suffix = f"-{args.scenario}" if args.scenario else ""
        for path in report.write(results, meta, RESULTS, suffix):
            say(f"wrote {path.relative_to(ROOT)}")
        if scaling.get("curve"):
            plot = RESULTS / "scaling.png"
            report.plot_scaling(
                scaling["curve"], plot, f"aitask end-to-end scaling, {meta['started']}, {meta['machine']['cpus']} CPUs"
            )
            say(f"wrote {plot.relative_to(ROOT)}")
        if soak := results.get("soak", {}).get("samples"):
            plot = RESULTS / "soak.png"
            report.plot_soak(soak, bench.plan.soak_warmup_s, plot, f"aitask soak, {meta['started']}")
            say(f"wrote {plot.relative_to(ROOT)}")
    say(f"total {meta['duration_s']:.0f} s")
    if any("error" in entry for entry in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
