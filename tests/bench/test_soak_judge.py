"""The soak's memory judge (bench/harness/soak.py): window peaks, so a heap swinging between collections is not read
as growth, and a heap that grows is."""

from __future__ import annotations

from typing import Any

from bench.harness.soak import EACH, GROWTH_LIMIT, judge

WARMUP_S = 600.0
END_S = 1800.0
STEP_S = 10.0


def samples_of(memory: dict[str, Any]) -> list[dict[str, Any]]:
    """Samples every STEP_S of processes named to a function of time (MiB), finishing at a steady rate."""
    samples = []
    for index in range(int(END_S / STEP_S) + 1):
        t_s = index * STEP_S
        held = {name: at(t_s) for name, at in memory.items()}
        samples.append(
            {
                "t_s": t_s,
                "rss_mib": held,
                "private_mib": held,
                "redis_used_mib": 10.0,
                "redis_keys": 1,
                "redis_keys_expiring": 1,
                "in_flight": 0,
                "finished": int(t_s * 20),
                EACH: {pid: (f"{name} (proc {pid})", value) for pid, (name, value) in enumerate(held.items())},
            }
        )
    return samples


def sawtooth(t_s: float) -> float:
    """A garbage-collected heap: from 53 to 74 MiB and back each minute, with no trend."""
    return 53.0 + 21.0 * ((t_s % 60.0) / 60.0)


def judged(memory: dict[str, Any]) -> dict[str, Any]:
    return judge(samples_of(memory), {"intervals": []}, WARMUP_S)


def test_a_heap_swinging_between_collections_is_not_growth() -> None:
    result = judged({"ferretdb": sawtooth, "envoy": lambda t_s: 75.0})
    # One sample at the warm-up's end (the bottom of a swing) against the run's peak reads as growth ...
    assert result["growth_after_warmup"]["ferretdb"]["percent_peak_over_warmup_sample"] > 30
    # ... window peak against window peak does not.
    assert abs(result["growth_after_warmup"]["ferretdb"]["percent"]) < 1
    assert result["soak_targets"][f"no process grows > {GROWTH_LIMIT:.0%} after warm-up"]
    assert result["drift"] == 0


def test_a_growing_heap_is_growth_however_it_swings() -> None:
    def leaking(t_s: float) -> float:
        return sawtooth(t_s) + t_s * 0.01  # 12 MiB more in the 20 minutes after the warm-up

    result = judged({"ferretdb": leaking, "envoy": lambda t_s: 75.0})
    assert result["largest_growth"]["process"].startswith("ferretdb")
    assert result["largest_growth"]["percent"] > GROWTH_LIMIT * 100
    assert not result["soak_targets"][f"no process grows > {GROWTH_LIMIT:.0%} after warm-up"]


def test_the_simulator_is_reported_but_not_judged() -> None:
    result = judged({"simulator": lambda t_s: 50.0 + t_s, "envoy": lambda t_s: 75.0})
    assert result["growth_after_warmup"]["simulator"]["percent"] > 100
    assert result["largest_growth"]["process"].startswith("envoy")
