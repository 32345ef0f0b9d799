"""What a task costs, in integer credits: the estimate reserved at create and the charge settled at the end.

The price is the catalogue's (provider_*/catalogue.toml, `price`), copied onto the task at create, so a task
is settled at the price its create was accepted at, whichever model served it.

- image: `per_image` for each image (the gateway asks for one).
- video: `per_video`.
- text: input and output tokens at their price per 1,000, rounded up. The estimate bounds both: a prompt of n
  UTF-8 bytes is at most n tokens, and the output at most `max_tokens` (the model's limit when the create
  sends none). The charge is what the vendor reported; a vendor that reported no usage is charged the estimate.
- A cancelled task is refunded, unless the vendor was already working on it (a submitted video, an image or
  text call in flight): neither vendor stops billing a job it started (upstream_apis.md), so that is charged at
  the estimate. A failed task is refunded.
"""

from __future__ import annotations

import math
from typing import Any

from aitask_common.tasks import PriceDocument, TaskStatus, TaskType


def price_document(price: Any) -> PriceDocument:
    """A catalogue Price (provider or task service message) as stored on a task."""
    return PriceDocument(
        per_image=int(price.per_image),
        per_video=int(price.per_video),
        per_1k_input_tokens=int(price.per_1k_input_tokens),
        per_1k_output_tokens=int(price.per_1k_output_tokens),
    )


def _tokens(price: PriceDocument, input_tokens: int, output_tokens: int) -> int:
    cost = input_tokens * price.get("per_1k_input_tokens", 0) + output_tokens * price.get("per_1k_output_tokens", 0)
    return math.ceil(cost / 1000)


def estimate(task_type: TaskType, price: PriceDocument, prompt: str, max_tokens: int) -> int:
    """The most a task may cost: what its create reserves."""
    if task_type is TaskType.IMAGE:
        return price.get("per_image", 0)
    if task_type is TaskType.VIDEO:
        return price.get("per_video", 0)
    return _tokens(price, len(prompt.encode()), max_tokens)


def charge(task: dict[str, Any], reserved: int) -> int | None:
    """What a final task costs: credits to settle, or None to refund the reservation."""
    status = TaskStatus(task["status"])
    if status is TaskStatus.FAILED:
        return None
    if status is TaskStatus.CANCELLED:
        started = bool(task.get("upstream_job_id")) or task.get("cancelled_from") == TaskStatus.PROCESSING.value
        return reserved if started else None
    price: PriceDocument = task.get("billing", {}).get("price", {})
    usage = task.get("usage")
    if task["type"] == TaskType.TEXT.value and usage:
        return _tokens(price, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
    return reserved
