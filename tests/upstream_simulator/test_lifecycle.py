"""The endpoints a task lifecycle needs, as the vendors have them (issue 29, item 5): OpenAI's video list and
delete, Ark's task cancel/delete, and the visual API's absence of a cancel."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI
from volcengine.visual.VisualService import VisualService
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkBadRequestError, ArkNotFoundError

from tests.upstream_simulator.helpers import visual_error, wait_for
from upstream_simulator.control import SimulatorControl

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
SEEDANCE = "doubao-seedance-1-0-pro-250528"


def test_openai_lists_videos_in_cursor_pages(oai: OpenAI, control: SimulatorControl) -> None:
    control.set_faults("openai.videos.create", video_seconds=0)
    ids = [oai.videos.create(model="sora-2", prompt=f"clip {i}").id for i in range(3)]
    page = oai.videos.list(limit=2)
    assert [video.id for video in page.data] == [ids[2], ids[1]]  # newest first
    assert page.has_more is True
    # The SDK follows the cursor (after=last_id) to the end.
    assert [video.id for video in oai.videos.list(limit=2)] == ids[::-1]
    assert [video.id for video in oai.videos.list(order="asc")] == ids
    assert control.stats()["openai.videos.list"]["ok"] == 4  # 1, then 2 (has_more false on the second), then 1


def test_openai_deletes_finished_videos_only(oai: OpenAI, control: SimulatorControl) -> None:
    control.set_faults("openai.videos.create", video_seconds=30)
    running = oai.videos.create(model="sora-2", prompt="slow")
    with pytest.raises(openai.BadRequestError, match="only a completed or failed video can be deleted"):
        oai.videos.delete(running.id)
    assert oai.videos.retrieve(running.id).status in ("queued", "in_progress")  # there is no cancel

    control.set_faults("openai.videos.create", video_seconds=0)
    done = oai.videos.create(model="sora-2", prompt="quick")
    failed = oai.videos.create(model="sora-2", prompt="x [[fail:video]]")
    for video in (done, failed):
        deleted = oai.videos.delete(video.id)
        assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
        with pytest.raises(openai.NotFoundError):
            oai.videos.retrieve(video.id)
        with pytest.raises(openai.NotFoundError):
            oai.videos.download_content(video.id)
    assert [video.id for video in oai.videos.list()] == [running.id]


def test_ark_delete_semantics(ark: Ark, control: SimulatorControl) -> None:
    """queued: cancelled (the record stays, status cancelled); running / cancelled: refused; finished: deleted."""
    control.set_faults("ark.tasks.create", video_seconds=30)
    queued = ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "a"}])
    ark.content_generation.tasks.delete(queued.id)
    assert ark.content_generation.tasks.get(task_id=queued.id).status == "cancelled"
    with pytest.raises(ArkBadRequestError, match="cancelled"):
        ark.content_generation.tasks.delete(queued.id)

    control.set_faults("ark.tasks.create", video_seconds=1.0)
    running = ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "b"}])
    wait_for(lambda: ark.content_generation.tasks.get(task_id=running.id).status == "running")
    with pytest.raises(ArkBadRequestError, match="running"):
        ark.content_generation.tasks.delete(running.id)

    control.set_faults("ark.tasks.create", video_seconds=0)
    failed = ark.content_generation.tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "[[fail:video]]"}])
    assert ark.content_generation.tasks.get(task_id=failed.id).status == "failed"
    ark.content_generation.tasks.delete(failed.id)
    with pytest.raises(ArkNotFoundError):
        ark.content_generation.tasks.get(task_id=failed.id)


def test_visual_api_has_no_cancel(visual: VisualService) -> None:
    task_id = visual.cv_sync2async_submit_task({"req_key": "jimeng_vgfm_t2v_l20", "prompt": "a dog"})["data"]["task_id"]
    with pytest.raises(Exception) as info:
        visual.cv_cancel_task({"req_key": "jimeng_vgfm_t2v_l20", "task_id": task_id})
    assert visual_error(info.value)["ResponseMetadata"]["Error"]["Code"] == "InvalidActionOrVersion"
    result = visual.cv_sync2async_get_result({"req_key": "jimeng_vgfm_t2v_l20", "task_id": task_id})
    assert result["data"]["status"] in ("in_queue", "generating", "done")  # it carries on
