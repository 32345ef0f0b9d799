import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import error_details_pb2 as _error_details_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateImageTaskRequest(_message.Message):
    __slots__ = ("prompt", "user_id", "provider", "model", "size", "seed", "response_format", "priority", "idempotency_key", "deadline_seconds", "wait_seconds", "webhook_url", "webhook_events", "allow_fallback")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_EVENTS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    user_id: str
    provider: str
    model: str
    size: str
    seed: int
    response_format: str
    priority: str
    idempotency_key: str
    deadline_seconds: int
    wait_seconds: int
    webhook_url: str
    webhook_events: _containers.RepeatedScalarFieldContainer[str]
    allow_fallback: bool
    def __init__(self, prompt: _Optional[str] = ..., user_id: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., size: _Optional[str] = ..., seed: _Optional[int] = ..., response_format: _Optional[str] = ..., priority: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., deadline_seconds: _Optional[int] = ..., wait_seconds: _Optional[int] = ..., webhook_url: _Optional[str] = ..., webhook_events: _Optional[_Iterable[str]] = ..., allow_fallback: _Optional[bool] = ...) -> None: ...

class CreateImageTaskResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: TaskCreated
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[TaskCreated, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class CreateVideoTaskRequest(_message.Message):
    __slots__ = ("prompt", "user_id", "provider", "model", "aspect_ratio", "seed", "priority", "idempotency_key", "deadline_seconds", "wait_seconds", "webhook_url", "webhook_events", "allow_fallback")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ASPECT_RATIO_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_EVENTS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    user_id: str
    provider: str
    model: str
    aspect_ratio: str
    seed: int
    priority: str
    idempotency_key: str
    deadline_seconds: int
    wait_seconds: int
    webhook_url: str
    webhook_events: _containers.RepeatedScalarFieldContainer[str]
    allow_fallback: bool
    def __init__(self, prompt: _Optional[str] = ..., user_id: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., aspect_ratio: _Optional[str] = ..., seed: _Optional[int] = ..., priority: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., deadline_seconds: _Optional[int] = ..., wait_seconds: _Optional[int] = ..., webhook_url: _Optional[str] = ..., webhook_events: _Optional[_Iterable[str]] = ..., allow_fallback: _Optional[bool] = ...) -> None: ...

class CreateVideoTaskResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: TaskCreated
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[TaskCreated, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class CreateTextTaskRequest(_message.Message):
    __slots__ = ("prompt", "user_id", "provider", "model", "max_tokens", "temperature", "priority", "idempotency_key", "deadline_seconds", "wait_seconds", "webhook_url", "webhook_events", "allow_fallback")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_EVENTS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    user_id: str
    provider: str
    model: str
    max_tokens: int
    temperature: float
    priority: str
    idempotency_key: str
    deadline_seconds: int
    wait_seconds: int
    webhook_url: str
    webhook_events: _containers.RepeatedScalarFieldContainer[str]
    allow_fallback: bool
    def __init__(self, prompt: _Optional[str] = ..., user_id: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., priority: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., deadline_seconds: _Optional[int] = ..., wait_seconds: _Optional[int] = ..., webhook_url: _Optional[str] = ..., webhook_events: _Optional[_Iterable[str]] = ..., allow_fallback: _Optional[bool] = ...) -> None: ...

class CreateTextTaskResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: TaskCreated
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[TaskCreated, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class TaskCreated(_message.Message):
    __slots__ = ("task_id", "status", "provider", "model", "task")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: str
    provider: str
    model: str
    task: Task
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class GetTaskResultRequest(_message.Message):
    __slots__ = ("task_id", "wait_seconds")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    wait_seconds: int
    def __init__(self, task_id: _Optional[str] = ..., wait_seconds: _Optional[int] = ...) -> None: ...

class GetTaskResultResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: Task
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[Task, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class DeleteTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class DeleteTaskResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: DeletedTask
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[DeletedTask, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class DeletedTask(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("user_id", "type", "limit", "offset", "status", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    type: str
    limit: int
    offset: int
    status: str
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., type: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., status: _Optional[str] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: TaskPage
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[TaskPage, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class TaskPage(_message.Message):
    __slots__ = ("tasks", "limit", "offset", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    limit: int
    offset: int
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "type", "status", "created", "updated", "user_id", "provider", "model", "prompt", "image_url", "image_base64", "video_url", "text_result", "revised_prompt", "error_message", "attempts", "usage", "parameters", "cancel_reason", "queue_position", "progress", "served_provider", "served_model", "deadline", "webhook_url", "webhook_events", "upstream_url", "output", "allow_fallback")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BASE64_FIELD_NUMBER: _ClassVar[int]
    VIDEO_URL_FIELD_NUMBER: _ClassVar[int]
    TEXT_RESULT_FIELD_NUMBER: _ClassVar[int]
    REVISED_PROMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REASON_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SERVED_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_EVENTS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_URL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    type: str
    status: str
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    user_id: str
    provider: str
    model: str
    prompt: str
    image_url: str
    image_base64: str
    video_url: str
    text_result: str
    revised_prompt: str
    error_message: str
    attempts: int
    usage: TokenUsage
    parameters: TaskParameters
    cancel_reason: str
    queue_position: int
    progress: int
    served_provider: str
    served_model: str
    deadline: _timestamp_pb2.Timestamp
    webhook_url: str
    webhook_events: _containers.RepeatedScalarFieldContainer[str]
    upstream_url: str
    output: TaskOutput
    allow_fallback: bool
    def __init__(self, task_id: _Optional[str] = ..., type: _Optional[str] = ..., status: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., user_id: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., image_url: _Optional[str] = ..., image_base64: _Optional[str] = ..., video_url: _Optional[str] = ..., text_result: _Optional[str] = ..., revised_prompt: _Optional[str] = ..., error_message: _Optional[str] = ..., attempts: _Optional[int] = ..., usage: _Optional[_Union[TokenUsage, _Mapping]] = ..., parameters: _Optional[_Union[TaskParameters, _Mapping]] = ..., cancel_reason: _Optional[str] = ..., queue_position: _Optional[int] = ..., progress: _Optional[int] = ..., served_provider: _Optional[str] = ..., served_model: _Optional[str] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., webhook_url: _Optional[str] = ..., webhook_events: _Optional[_Iterable[str]] = ..., upstream_url: _Optional[str] = ..., output: _Optional[_Union[TaskOutput, _Mapping]] = ..., allow_fallback: _Optional[bool] = ...) -> None: ...

class TokenUsage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class TaskParameters(_message.Message):
    __slots__ = ("size", "aspect_ratio", "max_tokens", "temperature", "seed", "response_format", "priority")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ASPECT_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    size: str
    aspect_ratio: str
    max_tokens: int
    temperature: float
    seed: int
    response_format: str
    priority: str
    def __init__(self, size: _Optional[str] = ..., aspect_ratio: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., response_format: _Optional[str] = ..., priority: _Optional[str] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class CancelTaskResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: Task
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[Task, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class WatchTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class TaskEvent(_message.Message):
    __slots__ = ("success", "event", "task", "message", "code")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    event: str
    task: Task
    message: str
    code: str
    def __init__(self, success: _Optional[bool] = ..., event: _Optional[str] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., message: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: ModelList
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[ModelList, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class ModelList(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[CatalogueModel]
    def __init__(self, models: _Optional[_Iterable[_Union[CatalogueModel, _Mapping]]] = ...) -> None: ...

class CatalogueModel(_message.Message):
    __slots__ = ("provider", "model", "type", "asynchronous", "sizes", "aspect_ratios", "default_size", "default_aspect_ratio", "max_tokens_limit", "temperature_min", "temperature_max", "accepts_seed", "response_formats", "max_prompt_chars", "note", "live_instances", "available", "served_model", "alternative", "fallbacks", "price")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ASYNCHRONOUS_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    ASPECT_RATIOS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ASPECT_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_MIN_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_MAX_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_SEED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMATS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    LIVE_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_FIELD_NUMBER: _ClassVar[int]
    ALTERNATIVE_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    type: str
    asynchronous: bool
    sizes: _containers.RepeatedScalarFieldContainer[str]
    aspect_ratios: _containers.RepeatedScalarFieldContainer[str]
    default_size: str
    default_aspect_ratio: str
    max_tokens_limit: int
    temperature_min: float
    temperature_max: float
    accepts_seed: bool
    response_formats: _containers.RepeatedScalarFieldContainer[str]
    max_prompt_chars: int
    note: str
    live_instances: int
    available: bool
    served_model: str
    alternative: str
    fallbacks: _containers.RepeatedScalarFieldContainer[str]
    price: ModelPrice
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., type: _Optional[str] = ..., asynchronous: _Optional[bool] = ..., sizes: _Optional[_Iterable[str]] = ..., aspect_ratios: _Optional[_Iterable[str]] = ..., default_size: _Optional[str] = ..., default_aspect_ratio: _Optional[str] = ..., max_tokens_limit: _Optional[int] = ..., temperature_min: _Optional[float] = ..., temperature_max: _Optional[float] = ..., accepts_seed: _Optional[bool] = ..., response_formats: _Optional[_Iterable[str]] = ..., max_prompt_chars: _Optional[int] = ..., note: _Optional[str] = ..., live_instances: _Optional[int] = ..., available: _Optional[bool] = ..., served_model: _Optional[str] = ..., alternative: _Optional[str] = ..., fallbacks: _Optional[_Iterable[str]] = ..., price: _Optional[_Union[ModelPrice, _Mapping]] = ...) -> None: ...

class ModelPrice(_message.Message):
    __slots__ = ("per_image", "per_video", "per_1k_input_tokens", "per_1k_output_tokens")
    PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    PER_VIDEO_FIELD_NUMBER: _ClassVar[int]
    PER_1K_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PER_1K_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    per_image: int
    per_video: int
    per_1k_input_tokens: int
    per_1k_output_tokens: int
    def __init__(self, per_image: _Optional[int] = ..., per_video: _Optional[int] = ..., per_1k_input_tokens: _Optional[int] = ..., per_1k_output_tokens: _Optional[int] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("user_id", "balance", "reserved", "available")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    balance: int
    reserved: int
    available: int
    def __init__(self, user_id: _Optional[str] = ..., balance: _Optional[int] = ..., reserved: _Optional[int] = ..., available: _Optional[int] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: Balance
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[Balance, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class ListLedgerEntriesRequest(_message.Message):
    __slots__ = ("user_id", "limit", "offset")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit: int
    offset: int
    def __init__(self, user_id: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("seq", "reason", "task_id", "amount", "held", "balance_after", "reserved_after", "time", "model", "note")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_FIELD_NUMBER: _ClassVar[int]
    RESERVED_AFTER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    reason: str
    task_id: str
    amount: int
    held: int
    balance_after: int
    reserved_after: int
    time: _timestamp_pb2.Timestamp
    model: str
    note: str
    def __init__(self, seq: _Optional[int] = ..., reason: _Optional[str] = ..., task_id: _Optional[str] = ..., amount: _Optional[int] = ..., held: _Optional[int] = ..., balance_after: _Optional[int] = ..., reserved_after: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class LedgerPage(_message.Message):
    __slots__ = ("entries", "balance")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    balance: Balance
    def __init__(self, entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ...) -> None: ...

class ListLedgerEntriesResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: LedgerPage
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[LedgerPage, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class GrantCreditsRequest(_message.Message):
    __slots__ = ("user_id", "amount", "note", "grant_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    amount: int
    note: str
    grant_id: str
    def __init__(self, user_id: _Optional[str] = ..., amount: _Optional[int] = ..., note: _Optional[str] = ..., grant_id: _Optional[str] = ...) -> None: ...

class GrantCreditsResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: LedgerEntry
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[LedgerEntry, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class GetWebhookSecretRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class RotateWebhookSecretRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetWebhookSecretResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: WebhookSecret
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[WebhookSecret, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class WebhookSecret(_message.Message):
    __slots__ = ("user_id", "secret", "created", "previous_secret", "previous_expires")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECRET_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_EXPIRES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    secret: str
    created: _timestamp_pb2.Timestamp
    previous_secret: str
    previous_expires: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., secret: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_secret: _Optional[str] = ..., previous_expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListWebhookDeliveriesRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ListWebhookDeliveriesResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: WebhookDeliveryLog
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[WebhookDeliveryLog, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class WebhookDeliveryLog(_message.Message):
    __slots__ = ("task_id", "messages")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    messages: _containers.RepeatedCompositeFieldContainer[WebhookMessage]
    def __init__(self, task_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[WebhookMessage, _Mapping]]] = ...) -> None: ...

class WebhookMessage(_message.Message):
    __slots__ = ("message_id", "type", "state", "created", "next_attempt", "attempts")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    type: str
    state: str
    created: _timestamp_pb2.Timestamp
    next_attempt: _timestamp_pb2.Timestamp
    attempts: _containers.RepeatedCompositeFieldContainer[WebhookAttempt]
    def __init__(self, message_id: _Optional[str] = ..., type: _Optional[str] = ..., state: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_attempt: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[WebhookAttempt, _Mapping]]] = ...) -> None: ...

class WebhookAttempt(_message.Message):
    __slots__ = ("time", "status_code", "error", "latency_ms", "next_attempt", "response_excerpt")
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_EXCERPT_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    status_code: int
    error: str
    latency_ms: int
    next_attempt: _timestamp_pb2.Timestamp
    response_excerpt: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status_code: _Optional[int] = ..., error: _Optional[str] = ..., latency_ms: _Optional[int] = ..., next_attempt: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., response_excerpt: _Optional[str] = ...) -> None: ...

class TaskOutput(_message.Message):
    __slots__ = ("size", "content_type", "sha256", "stored")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    size: int
    content_type: str
    sha256: str
    stored: _timestamp_pb2.Timestamp
    def __init__(self, size: _Optional[int] = ..., content_type: _Optional[str] = ..., sha256: _Optional[str] = ..., stored: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueueState(_message.Message):
    __slots__ = ("priority", "queued", "started", "scheduled", "failed", "oldest_age_seconds", "paused", "finished_last_hour")
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    OLDEST_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_LAST_HOUR_FIELD_NUMBER: _ClassVar[int]
    priority: str
    queued: int
    started: int
    scheduled: int
    failed: int
    oldest_age_seconds: float
    paused: bool
    finished_last_hour: int
    def __init__(self, priority: _Optional[str] = ..., queued: _Optional[int] = ..., started: _Optional[int] = ..., scheduled: _Optional[int] = ..., failed: _Optional[int] = ..., oldest_age_seconds: _Optional[float] = ..., paused: _Optional[bool] = ..., finished_last_hour: _Optional[int] = ...) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: _containers.RepeatedCompositeFieldContainer[QueueState]
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Iterable[_Union[QueueState, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...

class PauseQueueRequest(_message.Message):
    __slots__ = ("priority",)
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    priority: str
    def __init__(self, priority: _Optional[str] = ...) -> None: ...

class PauseQueueResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: QueueState
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[QueueState, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class ResumeQueueRequest(_message.Message):
    __slots__ = ("priority",)
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    priority: str
    def __init__(self, priority: _Optional[str] = ...) -> None: ...

class ResumeQueueResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: QueueState
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[QueueState, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class ListAuditEntriesRequest(_message.Message):
    __slots__ = ("limit", "offset")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    limit: int
    offset: int
    def __init__(self, limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("time", "key_id", "user_id", "action", "target", "source")
    TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    key_id: str
    user_id: str
    action: str
    target: str
    source: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., user_id: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class ListAuditEntriesResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...

class SearchTasksRequest(_message.Message):
    __slots__ = ("task_id", "user_id", "status", "type", "provider", "model", "created_after", "created_before", "limit", "page_token")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    user_id: str
    status: str
    type: str
    provider: str
    model: str
    created_after: str
    created_before: str
    limit: int
    page_token: str
    def __init__(self, task_id: _Optional[str] = ..., user_id: _Optional[str] = ..., status: _Optional[str] = ..., type: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., created_after: _Optional[str] = ..., created_before: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetTaskTimelineRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class TimelineEvent(_message.Message):
    __slots__ = ("time", "event", "detail")
    class DetailEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    event: str
    detail: _containers.ScalarMap[str, str]
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event: _Optional[str] = ..., detail: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TaskTimeline(_message.Message):
    __slots__ = ("task", "events")
    TASK_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    task: Task
    events: _containers.RepeatedCompositeFieldContainer[TimelineEvent]
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., events: _Optional[_Iterable[_Union[TimelineEvent, _Mapping]]] = ...) -> None: ...

class GetTaskTimelineResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: TaskTimeline
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[TaskTimeline, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class RetryTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class RetryTaskResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: TaskCreated
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[TaskCreated, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class ListProvidersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProviderInstanceState(_message.Message):
    __slots__ = ("provider", "instance_id", "address", "health", "circuit", "open_circuits", "in_flight", "draining", "models")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_FIELD_NUMBER: _ClassVar[int]
    OPEN_CIRCUITS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    instance_id: str
    address: str
    health: str
    circuit: str
    open_circuits: _containers.RepeatedScalarFieldContainer[str]
    in_flight: int
    draining: bool
    models: int
    def __init__(self, provider: _Optional[str] = ..., instance_id: _Optional[str] = ..., address: _Optional[str] = ..., health: _Optional[str] = ..., circuit: _Optional[str] = ..., open_circuits: _Optional[_Iterable[str]] = ..., in_flight: _Optional[int] = ..., draining: _Optional[bool] = ..., models: _Optional[int] = ...) -> None: ...

class ListProvidersResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: _containers.RepeatedCompositeFieldContainer[ProviderInstanceState]
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Iterable[_Union[ProviderInstanceState, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...

class DrainProviderRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class DrainProviderResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: ProviderInstanceState
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[ProviderInstanceState, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ApiKeyInfo(_message.Message):
    __slots__ = ("key_id", "user_id", "role", "name", "created", "revoked", "rate_limit")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    user_id: str
    role: str
    name: str
    created: _timestamp_pb2.Timestamp
    revoked: _timestamp_pb2.Timestamp
    rate_limit: int
    def __init__(self, key_id: _Optional[str] = ..., user_id: _Optional[str] = ..., role: _Optional[str] = ..., name: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rate_limit: _Optional[int] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: _containers.RepeatedCompositeFieldContainer[ApiKeyInfo]
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Iterable[_Union[ApiKeyInfo, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("user_id", "role", "name", "rate_limit")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    role: str
    name: str
    rate_limit: int
    def __init__(self, user_id: _Optional[str] = ..., role: _Optional[str] = ..., name: _Optional[str] = ..., rate_limit: _Optional[int] = ...) -> None: ...

class CreatedApiKey(_message.Message):
    __slots__ = ("key", "api_key")
    KEY_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    key: ApiKeyInfo
    api_key: str
    def __init__(self, key: _Optional[_Union[ApiKeyInfo, _Mapping]] = ..., api_key: _Optional[str] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: CreatedApiKey
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[CreatedApiKey, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: ApiKeyInfo
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[ApiKeyInfo, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class GetCallerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Caller(_message.Message):
    __slots__ = ("key_id", "user_id", "role")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    user_id: str
    role: str
    def __init__(self, key_id: _Optional[str] = ..., user_id: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class GetCallerResponse(_message.Message):
    __slots__ = ("success", "data", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    data: Caller
    message: str
    def __init__(self, success: _Optional[bool] = ..., data: _Optional[_Union[Caller, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...
