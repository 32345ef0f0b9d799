"""The `aitask` command: create, follow, fetch and manage tasks from a terminal or a script.

Exit codes: 0 done, 1 the task failed or was cancelled (or the gateway refused the call), 2 usage error (bad
options, or input the gateway calls invalid), 3 gateway unreachable or the API key refused. With `--json`, stdout
holds exactly one JSON document (an error too: `{"error": …}`); progress goes to stderr, only on a terminal.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from aitask_client.client import Client
from aitask_client.errors import (
    AitaskError,
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from aitask_client.types import Balance, Event, LedgerEntry, Model, Task

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3

app = typer.Typer(
    name="aitask",
    help="Create and follow AI generation tasks on an aitask gateway (AITASK_URL, AITASK_API_KEY).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
# In a pipe, tables keep whole cells (rich would fold them at 80 columns).
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 1000)
stderr = Console(stderr=True)

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
TaskId = Annotated[str, typer.Argument(help="The task's id.", show_default=False)]
Prompt = Annotated[str, typer.Argument(help="What to generate.", show_default=False)]
ModelName = Annotated[str, typer.Option(help="Model name; default: the first available one of its type.")]
Provider = Annotated[str, typer.Option(help="Provider, when two serve the same model name.")]
Priority = Annotated[str, typer.Option(help="Queue priority: critical, default or low.")]
Deadline = Annotated[int | None, typer.Option(help="Cancel it if it has not started within this many seconds.")]
Webhook = Annotated[str, typer.Option(help="POST the task's final event to this URL (signed).")]
NoWait = Annotated[bool, typer.Option("--no-wait", help="Print the task id and return at once.")]
Timeout = Annotated[float | None, typer.Option(help="Give up waiting after this many seconds (exit 1).")]
Output = Annotated[
    Path, typer.Option("-o", "--output", help="File, or directory, to save the result in.", show_default=False)
]


@dataclasses.dataclass
class Settings:
    url: str | None
    api_key: str | None
    user_id: str | None


@app.callback()
def main_options(
    context: typer.Context,
    url: Annotated[
        str | None, typer.Option(envvar="AITASK_URL", help="The gateway, e.g. http://127.0.0.1:8080.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="AITASK_API_KEY", help="Your API key.", show_default=False)
    ] = None,
    user_id: Annotated[
        str | None, typer.Option(envvar="AITASK_USER_ID", help="Act for this user (admin keys).")
    ] = None,
) -> None:
    """Create and follow AI generation tasks on an aitask gateway."""
    context.obj = Settings(url, api_key, user_id)


# --- output ------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


def to_json(item: Task | Model | Balance | LedgerEntry) -> dict[str, Any]:
    """A task, model, balance or ledger entry as a JSON object (times in ISO 8601)."""
    return dataclasses.asdict(item, dict_factory=lambda pairs: {key: _plain(value) for key, value in pairs})


def emit(document: Any) -> None:
    """The one JSON document of a --json run."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")


def fail(error: AitaskError, as_json: bool) -> NoReturn:
    """Report a refused call and exit with its code."""
    if as_json:
        emit({"error": {"code": error.code, "message": error.message, "field": error.field}})
    else:
        stderr.print(f"[red]error[/red]: {error}", highlight=False)
    if isinstance(error, Unavailable | DeadlineExceeded | Unauthenticated | PermissionDenied):
        raise typer.Exit(EXIT_UNREACHABLE)
    raise typer.Exit(EXIT_USAGE if isinstance(error, InvalidArgument) else EXIT_FAILED)


@contextmanager
def client_for(context: typer.Context, as_json: bool) -> Iterator[Client]:
    """A Client from the global options; any AitaskError ends the command with its exit code."""
    settings: Settings = context.obj
    try:
        client = Client(settings.url, settings.api_key, user_id=settings.user_id)
    except ValueError as error:  # no URL, or a malformed one
        fail(InvalidArgument(str(error), "USAGE", "url"), as_json)
    try:
        with client:
            yield client
    except AitaskError as error:
        fail(error, as_json)


def describe(task: Task) -> str:
    """The status line's words: where the task stands."""
    if task.status == "pending" and task.queue_position is not None:
        return f"pending · queue position {task.queue_position}"
    if task.status == "processing" and task.progress is not None:
        return f"processing · {task.progress}%"
    return task.status


@contextmanager
def status_line(task: Task) -> Iterator[Callable[[Task], None]]:
    """A live line on stderr (status, progress bar, elapsed) while a task runs; nothing when stderr is no terminal."""
    if not stderr.is_terminal:
        yield lambda _task: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        line = progress.add_task(f"{task.id} {describe(task)}", total=100)

        def update(current: Task) -> None:
            progress.update(line, description=f"{current.id} {describe(current)}", completed=current.progress or 0)

        yield update


def follow(client: Client, task: Task, timeout: float | None) -> Task:
    """Watch the task to its end, updating the status line; the final task (or as it stands after `timeout`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    # The stream is read on a thread so that a task with no news still ends the wait at the deadline.
    updates: queue.Queue[Event | AitaskError | None] = queue.Queue()

    def pump() -> None:
        try:
            for event in client.watch(task):
                updates.put(event)
        except AitaskError as error:
            updates.put(error)
        updates.put(None)

    threading.Thread(target=pump, name="aitask-watch", daemon=True).start()
    with status_line(task) as update:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                item = updates.get(timeout=None if remaining is None else max(remaining, 0))
            except queue.Empty:
                return client.get(task)
            if isinstance(item, AitaskError):
                raise item
            if item is None:  # the stream ended early: ask for the task itself
                return client.wait(task, remaining)
            update(item.task)
            if item.type == "final":
                return item.task


def finish(task: Task, as_json: bool, saved: Path | None = None, show: Callable[[Task], None] | None = None) -> None:
    """Print the task's outcome and exit 0 (completed) or 1 (failed, cancelled, or not done in time)."""
    if as_json:
        emit(to_json(task) | ({"saved": str(saved)} if saved else {}))
    elif task.status == "completed" and show is not None:
        show(task)
    elif saved is not None:
        stdout.print(str(saved), highlight=False)
    elif task.status != "completed":
        reason = task.error or task.cancel_reason or "not finished in time"
        stderr.print(f"[red]{task.id} {task.status}[/red]: {reason}", highlight=False)
    raise typer.Exit(0 if task.status == "completed" else EXIT_FAILED)


def default_model(client: Client, task_type: str) -> str:
    """The first available model of a type in the live catalogue."""
    for model in client.models(task_type):
        if model.available:
            return model.model
    raise InvalidArgument(f"model: no {task_type} model is available right now", "INVALID_ARGUMENT", "model")


def create_and_follow(
    context: typer.Context,
    task_type: str,
    create: Callable[[Client, str], Task],
    model: str,
    options: tuple[bool, bool, float | None],
    output: Path | None,
) -> None:
    """The shared path of `image`, `video` and `text`: create, then return, or follow and save the result."""
    as_json, no_wait, timeout = options
    with client_for(context, as_json) as client:
        task = create(client, model or default_model(client, task_type))
        if no_wait:
            if as_json:
                emit(to_json(task))
            else:
                stdout.print(task.id, highlight=False)
            raise typer.Exit(0)
        task = task if task.done else follow(client, task, timeout)
        if task.status == "completed" and task_type != "text":
            finish(task, as_json, client.download(task, (output or Path.cwd()).resolve()))
        finish(task, as_json, show=lambda done: stdout.print(done.text, highlight=False, markup=False))


# --- commands ------------------------------------------------------------------
@app.command(epilog='Example: aitask image "a red fox in the snow" --size 1024x1024 -o fox.png')
def image(
    context: typer.Context,
    prompt: Prompt,
    model: ModelName = "",
    provider: Provider = "",
    size: Annotated[str, typer.Option(help="Output size WxH; default: the model's.")] = "",
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    priority: Priority = "",
    deadline: Deadline = None,
    webhook_url: Webhook = "",
    output: Output = Path("."),
    no_wait: NoWait = False,
    timeout: Timeout = None,
    as_json: Json = False,
) -> None:
    """Generate an image, show its progress and save it (to the current directory unless -o says otherwise)."""

    def create(client: Client, name: str) -> Task:
        return client.create_image(
            prompt, model=name, provider=provider, size=size, seed=seed, priority=priority,
            deadline_seconds=deadline, webhook_url=webhook_url,
        )  # fmt: skip

    create_and_follow(context, "image", create, model, (as_json, no_wait, timeout), output)


@app.command(epilog='Example: aitask video "waves on a pebble beach" --aspect-ratio 16:9 -o waves.mp4')
def video(
    context: typer.Context,
    prompt: Prompt,
    model: ModelName = "",
    provider: Provider = "",
    aspect_ratio: Annotated[str, typer.Option(help="Aspect ratio, e.g. 16:9; default: the model's.")] = "",
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    priority: Priority = "",
    deadline: Deadline = None,
    webhook_url: Webhook = "",
    output: Output = Path("."),
    no_wait: NoWait = False,
    timeout: Timeout = None,
    as_json: Json = False,
) -> None:
    """Generate a video, show its progress and save it (to the current directory unless -o says otherwise)."""

    def create(client: Client, name: str) -> Task:
        return client.create_video(
            prompt, model=name, provider=provider, aspect_ratio=aspect_ratio, seed=seed, priority=priority,
            deadline_seconds=deadline, webhook_url=webhook_url,
        )  # fmt: skip

    create_and_follow(context, "video", create, model, (as_json, no_wait, timeout), output)


@app.command(epilog='Example: aitask text "a haiku about queues" --max-tokens 60')
def text(
    context: typer.Context,
    prompt: Prompt,
    model: ModelName = "",
    provider: Provider = "",
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    priority: Priority = "",
    deadline: Deadline = None,
    webhook_url: Webhook = "",
    no_wait: NoWait = False,
    timeout: Timeout = None,
    as_json: Json = False,
) -> None:
    """Generate text and print it."""

    def create(client: Client, name: str) -> Task:
        return client.create_text(
            prompt, model=name, provider=provider, max_tokens=max_tokens, temperature=temperature,
            priority=priority, deadline_seconds=deadline, webhook_url=webhook_url,
        )  # fmt: skip

    create_and_follow(context, "text", create, model, (as_json, no_wait, timeout), None)


@app.command(epilog="Example: aitask get 01JD7ZQ8X4M2T3V5W6Y7Z8A9BC --json")
def get(context: typer.Context, task_id: TaskId, as_json: Json = False) -> None:
    """Show a task: its status, parameters and result."""
    with client_for(context, as_json) as client:
        task = client.get(task_id)
    if as_json:
        emit(to_json(task))
    else:
        table = Table(show_header=False, box=None)
        for key, value in to_json(task).items():
            if value not in ("", None, [], {}) and key != "image_base64":
                table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
        stdout.print(table)
    raise typer.Exit(EXIT_FAILED if task.status in ("failed", "cancelled") else 0)


@app.command(epilog="Example: aitask watch 01JD7ZQ8X4M2T3V5W6Y7Z8A9BC")
def watch(context: typer.Context, task_id: TaskId, as_json: Json = False) -> None:
    """Print a task's events as they happen, until it is final (with --json: all of them at the end)."""
    events: list[Event] = []
    with client_for(context, as_json) as client:
        for event in client.watch(task_id):
            events.append(event)
            if not as_json:
                stdout.print(f"{event.type:<8} {describe(event.task)}", highlight=False)
    final = events[-1].task
    if as_json:
        emit({"task": to_json(final), "events": [{"event": e.type, "task": to_json(e.task)} for e in events]})
    raise typer.Exit(0 if final.status == "completed" else EXIT_FAILED)


@app.command(epilog="Example: aitask cancel 01JD7ZQ8X4M2T3V5W6Y7Z8A9BC")
def cancel(context: typer.Context, task_id: TaskId, as_json: Json = False) -> None:
    """Cancel a task that is not final."""
    with client_for(context, as_json) as client:
        task = client.cancel(task_id)
    if as_json:
        emit(to_json(task))
    else:
        stdout.print(f"{task.id} {task.status}", highlight=False)


@app.command("ls", epilog="Example: aitask ls --type image --status completed --limit 5")
def list_tasks(
    context: typer.Context,
    type: Annotated[str, typer.Option(help="image, video or text.")] = "",
    status: Annotated[str, typer.Option(help="pending, processing, completed, failed or cancelled.")] = "",
    limit: Annotated[int, typer.Option(min=1, help="At most this many tasks.")] = 20,
    as_json: Json = False,
) -> None:
    """List your tasks, newest first."""
    with client_for(context, as_json) as client:
        tasks = [task for task, _ in zip(client.list(type=type, status=status), range(limit), strict=False)]
    if as_json:
        emit({"tasks": [to_json(task) for task in tasks]})
        return
    table = Table("id", "type", "status", "model", "created", "result")
    for task in tasks:
        created = task.created.strftime("%Y-%m-%d %H:%M:%S") if task.created else ""
        result = task.error or task.text[:40] or ("output" if task.url or task.image_base64 else describe(task))
        table.add_row(task.id, task.type, task.status, task.model, created, result)
    stdout.print(table)


@app.command("rm", epilog="Example: aitask rm 01JD7ZQ8X4M2T3V5W6Y7Z8A9BC")
def remove(context: typer.Context, task_id: TaskId, as_json: Json = False) -> None:
    """Delete a task and everything stored for it."""
    with client_for(context, as_json) as client:
        client.delete(task_id)
    if as_json:
        emit({"deleted": task_id})
    else:
        stdout.print(f"deleted {task_id}", highlight=False)


@app.command(epilog="Example: aitask models --type video")
def models(
    context: typer.Context,
    type: Annotated[str, typer.Option(help="image, video or text.")] = "",
    as_json: Json = False,
) -> None:
    """The live model catalogue."""
    with client_for(context, as_json) as client:
        catalogue = client.models(type)
    if as_json:
        emit({"models": [to_json(model) for model in catalogue]})
        return
    table = Table("model", "provider", "type", "available", "sizes / ratios", "note")
    for model in catalogue:
        shapes = ", ".join(model.sizes or model.aspect_ratios)
        table.add_row(model.model, model.provider, model.type, "yes" if model.available else "no", shapes, model.note)
    stdout.print(table)


@app.command(epilog="Example: aitask balance --json")
def balance(context: typer.Context, as_json: Json = False) -> None:
    """The user's credits: balance, reserved by running tasks, available."""
    with client_for(context, as_json) as client:
        credits = client.balance()
    if as_json:
        emit(to_json(credits))
        return
    stdout.print(
        f"{credits.user_id}: balance {credits.balance}, reserved {credits.reserved}, available {credits.available}",
        highlight=False,
    )


@app.command(epilog="Example: aitask ledger --limit 5")
def ledger(
    context: typer.Context,
    limit: Annotated[int, typer.Option(help="Entries, newest first (1-100).")] = 20,
    as_json: Json = False,
) -> None:
    """The user's credit ledger, newest first."""
    with client_for(context, as_json) as client:
        entries = client.ledger(limit=limit)
    if as_json:
        emit({"entries": [to_json(entry) for entry in entries]})
        return
    table = Table("#", "time", "reason", "task", "amount", "held", "balance after", "reserved after")
    for entry in entries:
        when = entry.time.strftime("%Y-%m-%d %H:%M:%S") if entry.time else ""
        table.add_row(
            str(entry.seq),
            when,
            entry.reason,
            entry.task_id or entry.note,
            f"{entry.amount:+d}",
            f"{entry.held:+d}",
            str(entry.balance_after),
            str(entry.reserved_after),
        )
    stdout.print(table)


def main() -> None:
    """The console script's entry point."""
    app()
