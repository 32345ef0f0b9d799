"""`deadline_seconds` on creates: pure validation."""

from __future__ import annotations

import pytest

from aitask.v1 import task_service_pb2 as pb
from aitask_common.tasks import TaskType
from task_service.validation import InvalidRequest, validate_create
from tests.task_service.test_validation import CATALOGUES, image


@pytest.mark.parametrize("seconds", [1, 30, 604800])
def test_a_deadline_within_a_week_is_kept(seconds: int) -> None:
    assert (
        validate_create(TaskType.IMAGE, image(deadline_seconds=seconds), CATALOGUES, 4000).deadline_seconds == seconds
    )


def test_no_deadline_means_none_on_every_task_type() -> None:
    assert validate_create(TaskType.IMAGE, image(), CATALOGUES, 4000).deadline_seconds is None
    text = pb.CreateTextTaskRequest(prompt="p", user_id="u", provider="volcengine", model="doubao-pro-4k")
    assert validate_create(TaskType.TEXT, text, CATALOGUES, 4000).deadline_seconds is None


@pytest.mark.parametrize("seconds", [0, -1, 604801, 2**31 - 1])
def test_a_deadline_out_of_range_names_the_field(seconds: int) -> None:
    with pytest.raises(InvalidRequest) as refused:
        validate_create(TaskType.IMAGE, image(deadline_seconds=seconds), CATALOGUES, 4000)
    assert refused.value.field == "deadline_seconds" and str(seconds) in str(refused.value)
