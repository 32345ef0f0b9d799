"""Checks a create request against the model catalogue; pure functions, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aitask.provider.v1 import provider_service_pb2
from aitask_common.prices import estimate, price_document
from aitask_common.queues import Priority
from aitask_common.tasks import PriceDocument, TaskParameters, TaskType

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.@:-]{1,128}")
SEED_MIN, SEED_MAX = -1, 2**31 - 1
# A create's deadline_seconds: at least a second, at most a week.
DEADLINE_SECONDS_MIN, DEADLINE_SECONDS_MAX = 1, 7 * 24 * 3600
# Task ids are ULIDs (Crockford base32); anything else cannot name a task (and NUL cannot even reach PostgreSQL).
TASK_ID_PATTERN = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
# C0 controls and DEL, but tab, newline and carriage return, which prompts may carry.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The output a text task's estimate assumes when neither its create nor its model bounds max_tokens.
MAX_TOKENS = 4096

Catalogues = dict[str, provider_service_pb2.DescribeCatalogueResponse]


class InvalidRequest(ValueError):
    """A request field is wrong; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class ValidatedRequest:
    """A create request that passed every check, with defaults filled in."""

    task_type: TaskType
    user_id: str
    provider: str
    model: str
    prompt: str
    parameters: TaskParameters
    # The vendor's model that will serve the task: the catalogue alias target (`upstream_model`), else `model`.
    served_model: str = ""
    # Cancel the task if it has not started upstream within this many seconds; None: no deadline.
    deadline_seconds: int | None = None
    # Where the task's webhook messages go (checked by task_service.webhooks), and which events; empty: none.
    webhook_url: str = ""
    webhook_events: tuple[str, ...] = ()
    # The task may run on a catalogue fallback (aitask_common/fallbacks.py).
    allow_fallback: bool = False
    # The catalogue's price, and the most the task may cost at it: what the create reserves (aitask_common/prices.py).
    price: PriceDocument = field(default_factory=PriceDocument)
    cost: int = 0


def validate_user_id(user_id: str) -> str:
    """A user id is required and limited to a safe alphabet."""
    if not user_id:
        raise InvalidRequest("user_id", "is required")
    # fullmatch: with match, "$" would also accept a trailing newline.
    if not USER_ID_PATTERN.fullmatch(user_id):
        raise InvalidRequest("user_id", "must be 1-128 characters of letters, digits and _ . @ : -")
    return user_id


def is_task_id(task_id: str) -> bool:
    """Whether `task_id` has the shape of an id this service makes."""
    return TASK_ID_PATTERN.fullmatch(task_id) is not None


def find_model(catalogues: Catalogues, provider: str, model: str) -> provider_service_pb2.Model:
    """The catalogue entry for provider/model, or an error naming what is unknown."""
    if not provider:
        raise InvalidRequest("provider", "is required")
    if not model:
        raise InvalidRequest("model", "is required")
    catalogue = catalogues.get(provider)
    if catalogue is None:
        known = ", ".join(sorted(catalogues)) or "none registered"
        raise InvalidRequest("provider", f"unknown provider {provider!r} (known: {known})")
    for entry in catalogue.models:
        if entry.name == model:
            return entry
    known = ", ".join(entry.name for entry in catalogue.models)
    raise InvalidRequest("model", f"unknown model {model!r} for provider {provider!r} (known: {known})")


def check_served(provider: str, model: provider_service_pb2.Model) -> None:
    """A model the vendor retired with no successor stays listed but is refused, naming what to use instead."""
    if model.retired:
        reason = f" ({model.note})" if model.note else ""
        instead = f"; use {model.alternative} instead" if model.alternative else ""
        raise InvalidRequest(
            "model", f"{model.name!r} was retired by the vendor and {provider!r} no longer serves it{reason}{instead}"
        )


def validate_create(
    task_type: TaskType, request: Any, catalogues: Catalogues, max_prompt_chars: int
) -> ValidatedRequest:
    """Validate a CreateImage/Video/TextTaskRequest; raise InvalidRequest on the first problem."""
    prompt = request.prompt.strip()
    if not prompt:
        raise InvalidRequest("prompt", "is required and must not be blank")
    if CONTROL_CHARACTERS.search(prompt):
        raise InvalidRequest("prompt", "must not contain control characters (tab and newline are fine)")
    user_id = validate_user_id(request.user_id)
    model = find_model(catalogues, request.provider, request.model)
    check_served(request.provider, model)
    if model.task_type != task_type:
        raise InvalidRequest("model", f"{model.name!r} is a {model.task_type} model and cannot run a {task_type} task")
    limit = min(max_prompt_chars, model.max_prompt_chars or max_prompt_chars)
    if len(prompt) > limit:
        raise InvalidRequest("prompt", f"is {len(prompt)} characters long; {model.name} accepts at most {limit}")
    parameters: TaskParameters = {"priority": _priority(request.priority)}
    if task_type is not TaskType.TEXT and request.HasField("seed"):
        parameters["seed"] = _seed(model, request.seed)
    if task_type is TaskType.IMAGE:
        parameters["size"] = _choice("size", request.size, model.sizes, model.default_size, model.name)
        # "url" unless the model answers base64 only (GPT image models and their aliases).
        default_format = "url" if "url" in model.response_formats or not model.response_formats else "b64_json"
        parameters["response_format"] = _choice(
            "response_format", request.response_format, model.response_formats, default_format, model.name
        )
    elif task_type is TaskType.VIDEO:
        parameters["aspect_ratio"] = _choice(
            "aspect_ratio", request.aspect_ratio, model.aspect_ratios, model.default_aspect_ratio, model.name
        )
    else:
        if request.HasField("max_tokens"):
            parameters["max_tokens"] = _max_tokens(model, request.max_tokens)
        if request.HasField("temperature"):
            parameters["temperature"] = _temperature(model, request.temperature)
    price = price_document(model.price)
    return ValidatedRequest(
        task_type,
        user_id,
        request.provider,
        model.name,
        prompt,
        parameters,
        model.upstream_model or model.name,
        deadline_seconds=_deadline_seconds(request),
        allow_fallback=request.allow_fallback,
        price=price,
        cost=estimate(task_type, price, prompt, parameters.get("max_tokens") or model.max_tokens_limit or MAX_TOKENS),
    )


def _deadline_seconds(request: Any) -> int | None:
    if not request.HasField("deadline_seconds"):
        return None
    seconds: int = request.deadline_seconds
    if not DEADLINE_SECONDS_MIN <= seconds <= DEADLINE_SECONDS_MAX:
        raise InvalidRequest(
            "deadline_seconds", f"must be between {DEADLINE_SECONDS_MIN} and {DEADLINE_SECONDS_MAX} (got {seconds})"
        )
    return seconds


def _priority(value: str) -> str:
    if not value:
        return Priority.DEFAULT
    if value not in Priority.__members__.values():
        raise InvalidRequest("priority", f"must be one of {', '.join(Priority)} (got {value!r})")
    return value


def _choice(field: str, value: str, allowed: Any, default: str, model: str) -> str:
    if not value:
        return default
    if value not in allowed:
        raise InvalidRequest(field, f"{value!r} is not allowed for {model} (allowed: {', '.join(allowed)})")
    return value


def _seed(model: provider_service_pb2.Model, seed: int) -> int:
    if not model.accepts_seed:
        raise InvalidRequest("seed", f"{model.name} does not accept a seed")
    if not SEED_MIN <= seed <= SEED_MAX:
        raise InvalidRequest("seed", f"must be between {SEED_MIN} and {SEED_MAX}")
    return seed


def _max_tokens(model: provider_service_pb2.Model, max_tokens: int) -> int:
    if not 1 <= max_tokens <= model.max_tokens_limit:
        raise InvalidRequest("max_tokens", f"must be between 1 and {model.max_tokens_limit} for {model.name}")
    return max_tokens


def _temperature(model: provider_service_pb2.Model, temperature: float) -> float:
    if not model.temperature_min <= temperature <= model.temperature_max:
        raise InvalidRequest(
            "temperature",
            f"must be between {model.temperature_min:g} and {model.temperature_max:g} for {model.name}",
        )
    return temperature
