"""The webhook retry schedule, Retry-After and the rotation overlap of secrets (issue 17): pure functions."""

from __future__ import annotations

from datetime import timedelta

from multidict import CIMultiDict

from aitask_common.tasks import utcnow
from aitask_common.webhook_signing import ROTATION_OVERLAP, UserSecrets, new_secret
from dispatcher_service.webhook_delivery import next_delay, retry_after_seconds

SCHEDULE = [5.0, 300.0, 1800.0]


def test_each_retry_follows_its_step_with_jitter_and_the_schedule_ends() -> None:
    for attempts_made, step in enumerate(SCHEDULE, start=1):
        delay = next_delay(SCHEDULE, attempts_made, None)
        assert delay is not None
        assert step * 0.9 <= delay <= step * 1.1
    assert next_delay(SCHEDULE, len(SCHEDULE) + 1, None) is None


def test_retry_after_is_never_undercut() -> None:
    delay = next_delay(SCHEDULE, 1, 60.0)
    assert delay == 60.0


def test_retry_after_is_read_on_429_and_503_only() -> None:
    assert retry_after_seconds(429, CIMultiDict({"Retry-After": "2"})) == 2.0
    assert retry_after_seconds(503, CIMultiDict({"retry-after": "7"})) == 7.0
    assert retry_after_seconds(500, CIMultiDict({"retry-after": "2"})) is None
    assert retry_after_seconds(429, CIMultiDict({"retry-after": "soon"})) is None


def test_the_previous_secret_signs_only_during_the_overlap() -> None:
    now = utcnow()
    current, previous = new_secret(), new_secret()
    secrets = UserSecrets("u", current, now, previous, now + ROTATION_OVERLAP)
    assert secrets.signing(now) == [current, previous]
    assert secrets.signing(now + ROTATION_OVERLAP + timedelta(seconds=1)) == [current]
    assert current.startswith("whsec_") and current != previous
