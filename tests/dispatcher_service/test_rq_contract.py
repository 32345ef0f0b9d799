"""The RQ internals the dispatcher relies on are still the ones its code was written against.

`DispatcherWorker` (dispatcher_service/worker.py) overrides thirteen methods of RQ's SimpleWorker, copies
parts of their bodies, and calls the private `Job._handle_success`; the reconciler reads RQ's Redis
key layout. None of that is RQ's public API, so rq is pinned (pyproject.toml). Before raising the pin,
run this file against the new rq: every failure names the internal that changed and the code of ours to
review. The signatures and source fingerprints below are those of rq 2.12.x. Only the last tests need
Redis: a redis-server of their own on a free loopback port, no stack.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib
import inspect
import shutil
import subprocess
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import rq
from redis import Redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker, WorkerStatus

from devstack.processes import free_port

RQ_VERSION = rq.__version__
WORKER_SOURCE = Path(__file__).resolve().parents[2] / "dispatcher_service" / "worker.py"

# Each method DispatcherWorker overrides, with the parameters (annotations left out) it has in rq 2.12.
OVERRIDDEN = {
    "bootstrap": "(self, logging_level='INFO', date_format='%H:%M:%S', log_format='%(asctime)s %(message)s')",
    "teardown": "(self)",
    "stop_scheduler": "(self)",
    "heartbeat": "(self, timeout=None, pipeline=None)",
    "check_for_suspension": "(self, burst)",
    "set_state": "(self, state, pipeline=None)",
    "execute_job": "(self, job, queue)",
    "prepare_job_execution": "(self, job, remove_from_intermediate_queue=False)",
    "handle_execution_ended": "(self, job, queue, heartbeat_ttl)",
    "handle_job_success": "(self, job, queue, started_job_registry)",
    "dequeue_job_and_maintain_ttl": "(self, timeout, max_idle_time=None)",
    "run_maintenance_tasks": "(self)",
    "_start_scheduler": (
        "(self, burst=False, logging_level='INFO', date_format='%H:%M:%S', log_format='%(asctime)s %(message)s')"
    ),
}

# RQ code that an override replaces, copies, wraps or is called from, with the DispatcherWorker method to
# review when it changes, and a fingerprint of its rq 2.12.x body (see `fingerprint`).
FINGERPRINTS = [
    ("rq.worker.SimpleWorker.prepare_job_execution", "prepare_job_execution", "a10684d4385201fa"),
    ("rq.worker.SimpleWorker.prepare_execution", "prepare_job_execution", "d43c1c604a3bfbac"),
    ("rq.executions.prepare_execution", "prepare_job_execution", "a1eae6f69e86311d"),
    ("rq.job.Job.prepare_for_execution", "prepare_job_execution", "d33f8d7bed0ca02f"),
    ("rq.worker.SimpleWorker.execute_job", "execute_job", "4fd623f9d15ba001"),
    ("rq.worker.SimpleWorker.perform_job", "execute_job", "a5d64a1d6384c348"),
    ("rq.worker.SimpleWorker.handle_execution_ended", "handle_execution_ended", "afa8eaeab680642c"),
    ("rq.worker.SimpleWorker.handle_job_success", "handle_job_success", "f81ba2df617162c7"),
    ("rq.job.Job._handle_success", "handle_job_success", "0dd25fda2163a1f1"),
    ("rq.worker.SimpleWorker.cleanup_execution", "handle_job_success", "28cb6c67d90d4c14"),
    ("rq.executions.cleanup_execution", "handle_job_success", "a58bf9489a807074"),
    ("rq.worker.SimpleWorker.heartbeat", "heartbeat", "73e713740e0a2111"),
    ("rq.worker.SimpleWorker.check_for_suspension", "check_for_suspension", "22faaf53ba488f24"),
    ("rq.worker.SimpleWorker.set_state", "set_state", "82f75b5332e8560d"),
    # Where RQ's work loop quits on a Redis error, which the overrides wait out instead.
    ("rq.worker.SimpleWorker.work", "dequeue_job_and_maintain_ttl", "4fb172339e3d1b31"),
    ("rq.worker.SimpleWorker.dequeue_job_and_maintain_ttl", "dequeue_job_and_maintain_ttl", "d8c532970d2ce459"),
    ("rq.worker.SimpleWorker.run_maintenance_tasks", "run_maintenance_tasks", "bd2b279e6eb23a38"),
    # The scheduler: _start_scheduler starts dispatcher_service.scheduler's instead of RQ's. It replaces RQ's work
    # loop (which run calls, in the scheduler's process), its connection and its start (RQ's forks).
    ("rq.worker.SimpleWorker._start_scheduler", "_start_scheduler", "788ae5e1a67b8124"),
    ("rq.scheduler.RQScheduler.work", "_start_scheduler", "5fc98a41beca992b"),
    ("rq.scheduler.RQScheduler.connection.fget", "_start_scheduler", "b9e0c49aba3fa30f"),
    ("rq.scheduler.RQScheduler.start", "_start_scheduler", "2a6975690c132733"),
    ("rq.scheduler.run", "_start_scheduler", "6f20d69d38e46aa0"),
    # A scheduler that died otherwise (killed) is started again by _restart_dead_scheduler.
    ("rq.scheduler.RQScheduler.acquire_locks", "check_for_suspension", "f9879fe4ba1fe77b"),
]

# aitask_common/rq_shards.py: what its ShardWorker (a base of DispatcherWorker) overrides, and the RQ code it copies,
# adjusts or replaces, with rq 2.12.x's fingerprints.
SHARD_WORKER_OVERRIDDEN = {
    "check_for_suspension": "(self, burst)",
    "clean_registries": "(self)",
    "run_maintenance_tasks": "(self)",
}
SHARD_FINGERPRINTS = [
    ("rq.worker.BaseWorker.check_for_suspension", "22faaf53ba488f24"),
    ("rq.suspension.is_suspended", "82814fe10bbcd039"),
    ("rq.worker.BaseWorker.clean_registries", "cdae05de537dad0a"),
    ("rq.worker_registration.clean_worker_registry", "a06fded55ad0a6ca"),
    ("rq.worker.BaseWorker.run_maintenance_tasks", "bd2b279e6eb23a38"),
    ("aitask_common.rq_shards.RQ_VALIDATE_JOB_ID", "ddace774fa1a9e8f"),
    ("aitask_common.rq_shards.RQ_SCHEDULER_KEY.fget", "405c4e08e178c3c4"),
]

# What a name in DispatcherWorker's code stands for, to check its calls against rq's signatures.
RECEIVERS: dict[str, type] = {"self": SimpleWorker, "super()": SimpleWorker, "job": Job, "Execution": Execution}


def dispatcher_worker_code() -> ast.ClassDef:
    """DispatcherWorker's class, read from its source without importing it: what this file checks is
    rq, and an import error elsewhere in the dispatcher must not hide what changed in rq."""
    tree = ast.parse(WORKER_SOURCE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "DispatcherWorker":
            return node
    pytest.fail(f"no class DispatcherWorker in {WORKER_SOURCE}")


def methods_of_ours() -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in dispatcher_worker_code().body if isinstance(node, ast.FunctionDef)}


def names_of_ours() -> set[str]:
    """The methods and class attributes DispatcherWorker defines itself, or its base ShardWorker does."""
    from aitask_common.rq_shards import ShardWorker

    names = set(methods_of_ours()) | set(vars(ShardWorker))
    for node in dispatcher_worker_code().body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return names


def shape_of_ours(method: ast.FunctionDef) -> str:
    """Our override's parameters and defaults, without annotations, spelled as `shape` spells rq's."""
    arguments = copy.deepcopy(method.args)
    for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg]:
        if argument is not None:
            argument.annotation = None
    return f"({ast.unparse(arguments)})"


def resolve(path: str) -> Any:
    """The object at a dotted path, importing the longest module prefix; fails naming what is gone."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for index, name in enumerate(parts[split:], start=split):
            if not hasattr(found, name):
                pytest.fail(f"rq {RQ_VERSION} has no {'.'.join(parts[: index + 1])} any more")
            found = getattr(found, name)
        return found
    pytest.fail(f"rq {RQ_VERSION}: cannot import {path}")


def shape(function: Callable[..., Any]) -> str:
    """A callable's parameters with their defaults, without annotations (they are spelled differently
    from release to release without changing anything)."""
    signature = inspect.signature(function)
    plain = [parameter.replace(annotation=inspect.Parameter.empty) for parameter in signature.parameters.values()]
    return str(signature.replace(parameters=plain, return_annotation=inspect.Signature.empty))


def fingerprint(function: Callable[..., Any]) -> str:
    """A hash of a function's code: its syntax tree without the docstring, so a change of comments or
    formatting is not one."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef)
    body = definition.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        definition.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.unparse(definition).encode()).hexdigest()[:16]


def calls_into_rq() -> Iterator[tuple[str, ast.Call, type, str]]:
    """(our method, the call, rq class, attribute) for each call DispatcherWorker makes on RQ objects
    (not those of its own helpers that RQ does not have)."""
    helpers = {name for name in names_of_ours() if not hasattr(SimpleWorker, name)}
    for method in dispatcher_worker_code().body:
        if not isinstance(method, ast.FunctionDef):
            continue
        for node in ast.walk(method):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = ast.unparse(node.func.value)
                owner = Queue if receiver.startswith("self.queue_class(") else RECEIVERS.get(receiver)
                if receiver == "self" and node.func.attr in helpers:
                    continue
                if owner is not None:
                    yield method.name, node, owner, node.func.attr


def attributes_read() -> set[tuple[str, str]]:
    """(receiver, attribute) for each attribute DispatcherWorker reads or sets on a worker, job or execution
    that it does not define itself (getattr(self, "name", ...) included)."""
    own = names_of_ours()
    found = set()
    for node in ast.walk(dispatcher_worker_code()):
        if isinstance(node, ast.Attribute):
            receiver = ast.unparse(node.value)
            if receiver in ("self", "job", "self.execution") and node.attr not in own:
                found.add((receiver, node.attr))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr" and len(node.args) >= 2:
            target, name = node.args[0], node.args[1]
            if ast.unparse(target) == "self" and isinstance(name, ast.Constant):
                found.add(("self", str(name.value)))
    return found


def test_dispatcher_worker_is_a_simple_worker_that_imports() -> None:
    try:
        from dispatcher_service.worker import DispatcherWorker
    except ImportError as error:
        pytest.fail(f"dispatcher_service.worker does not import (rq {RQ_VERSION}): {error!r}")
    assert issubclass(DispatcherWorker, SimpleWorker)


def test_dispatcher_worker_overrides_exactly_the_methods_listed_here() -> None:
    overridden = {name for name in methods_of_ours() if hasattr(SimpleWorker, name)}
    assert overridden == set(OVERRIDDEN), (
        "DispatcherWorker's overrides of rq changed: list each in OVERRIDDEN (and what it copies in FINGERPRINTS)"
    )


@pytest.mark.parametrize("name", sorted(OVERRIDDEN))
def test_each_overridden_method_has_the_signature_our_override_expects(name: str) -> None:
    rq_method = getattr(SimpleWorker, name, None)
    assert rq_method is not None, (
        f"rq {RQ_VERSION}'s SimpleWorker has no {name} any more: DispatcherWorker.{name} overrides nothing"
    )
    assert shape(rq_method) == OVERRIDDEN[name], (
        f"rq {RQ_VERSION} changed the signature of {rq_method.__qualname__} to {shape(rq_method)} "
        f"(was {OVERRIDDEN[name]}); review DispatcherWorker.{name} and how rq now calls it"
    )
    ours = shape_of_ours(methods_of_ours()[name])
    assert ours in (OVERRIDDEN[name], "(self, *args, **kwargs)"), f"DispatcherWorker.{name}{ours} does not match rq's"


@pytest.mark.parametrize(("path", "ours", "expected"), FINGERPRINTS, ids=[path for path, _, _ in FINGERPRINTS])
def test_the_rq_code_our_overrides_replace_or_copy_is_unchanged(path: str, ours: str, expected: str) -> None:
    rq_function = resolve(path)
    assert fingerprint(rq_function) == expected, (
        f"rq {RQ_VERSION} changed {rq_function.__qualname__} ({path}); review DispatcherWorker.{ours} against "
        f"the new body and update the hash in FINGERPRINTS to {fingerprint(rq_function)!r}"
    )


@pytest.mark.parametrize("name", sorted(SHARD_WORKER_OVERRIDDEN))
def test_each_method_the_shard_worker_overrides_has_rqs_signature(name: str) -> None:
    from aitask_common.rq_shards import ShardWorker

    rq_method = getattr(SimpleWorker, name, None)
    assert rq_method is not None, f"rq {RQ_VERSION}'s SimpleWorker has no {name} any more: ShardWorker.{name} is moot"
    assert shape(rq_method) == SHARD_WORKER_OVERRIDDEN[name] == shape(getattr(ShardWorker, name)), (
        f"rq {RQ_VERSION} changed {rq_method.__qualname__} to {shape(rq_method)}; review ShardWorker.{name}"
    )


@pytest.mark.parametrize(("path", "expected"), SHARD_FINGERPRINTS, ids=[path for path, _ in SHARD_FINGERPRINTS])
def test_the_rq_code_the_shard_worker_adjusts_is_unchanged(path: str, expected: str) -> None:
    rq_function = resolve(path)
    assert fingerprint(rq_function) == expected, (
        f"rq {RQ_VERSION} changed {rq_function.__qualname__} ({path}); review aitask_common/rq_shards.py against "
        f"the new body and update the hash in SHARD_FINGERPRINTS to {fingerprint(rq_function)!r}"
    )


def test_every_call_dispatcher_worker_makes_into_rq_binds_to_rq_signature() -> None:
    problems = []
    checked = set()
    for method, call, owner, attribute in calls_into_rq():
        target = getattr(owner, attribute, None)
        text = ast.unparse(call)
        if target is None:
            problems.append(f"DispatcherWorker.{method} calls {text}, but rq's {owner.__name__} has no {attribute}")
            continue
        if any(isinstance(arg, ast.Starred) for arg in call.args) or any(kw.arg is None for kw in call.keywords):
            continue  # forwards whatever it was given
        unbound = inspect.isfunction(inspect.getattr_static(owner, attribute))  # a method, not a class(method)
        positional = [None] * (len(call.args) + (1 if unbound else 0))
        try:
            inspect.signature(target).bind(*positional, **{kw.arg: None for kw in call.keywords if kw.arg})
        except TypeError as error:
            problems.append(
                f"DispatcherWorker.{method} calls {text}, which no longer fits rq {RQ_VERSION}'s "
                f"{target.__qualname__}{shape(target)}: {error}"
            )
        checked.add(f"{owner.__name__}.{attribute}")
    assert not problems, "\n".join(problems)
    # The private call is the one this file exists for: make sure the walk above saw it.
    assert {"Job._handle_success", "Execution.create", "Job.prepare_for_execution", "Job.cleanup"} <= checked


def test_rq_work_loop_still_calls_the_overrides_that_are_entered_from_it() -> None:
    tree = ast.parse(textwrap.dedent(inspect.getsource(SimpleWorker.work)))
    calls = [node.func for node in ast.walk(tree) if isinstance(node, ast.Call)]
    called = {call.attr for call in calls if isinstance(call, ast.Attribute) and ast.unparse(call.value) == "self"}
    entered = {
        "bootstrap",
        "check_for_suspension",
        "execute_job",
        "heartbeat",
        "teardown",
        "dequeue_job_and_maintain_ttl",
        "run_maintenance_tasks",
    }
    assert entered <= called, (
        f"rq {RQ_VERSION}'s {SimpleWorker.work.__qualname__} no longer calls {sorted(entered - called)}: "
        "DispatcherWorker's overrides of them would not run"
    )


def test_job_handle_success_takes_the_keywords_we_pass() -> None:
    assert shape(Job._handle_success) == (
        "(self, result_ttl, pipeline, worker_name='', execution_id=None, execution_started_at=None, "
        "execution_ended_at=None)"
    ), (
        f"rq {RQ_VERSION} changed Job._handle_success to {shape(Job._handle_success)}; "
        "review DispatcherWorker.handle_job_success"
    )
    assert shape(Execution.create) == "(job, ttl, pipeline, worker_name='')", (
        f"rq {RQ_VERSION} changed Execution.create to {shape(Execution.create)}; "
        "review DispatcherWorker.prepare_job_execution"
    )
    assert isinstance(inspect.getattr_static(Queue, "intermediate_queue_key"), property)
    assert (WorkerStatus.BUSY.value, WorkerStatus.IDLE.value) == ("busy", "idle")
    assert hasattr(SimpleWorker, "log_result_lifespan"), "rq no longer has SimpleWorker.log_result_lifespan"


def test_the_key_layout_the_reconciler_reads() -> None:
    layout = {
        "Job.key_for('x')": Job.key_for("x"),
        "Queue.redis_queue_namespace_prefix": Queue.redis_queue_namespace_prefix,
        "ScheduledJobRegistry.key_template": ScheduledJobRegistry.key_template,
        "JobStatus.QUEUED": JobStatus.QUEUED.value,
        "JobStatus.SCHEDULED": JobStatus.SCHEDULED.value,
    }
    assert layout == {
        "Job.key_for('x')": "rq:job:x",
        "Queue.redis_queue_namespace_prefix": "rq:queue:",
        "ScheduledJobRegistry.key_template": "rq:scheduled:{0}",
        "JobStatus.QUEUED": "queued",
        "JobStatus.SCHEDULED": "scheduled",
    }, f"rq {RQ_VERSION} changed the key layout dispatcher_service/reconciler.py reads"


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    """A redis-server of this module's own, on a free loopback port, keeping nothing on disk."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    connection = Redis(port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                connection.ping()
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield connection
    finally:
        connection.close()
        process.terminate()
        process.wait(10)


def queue_in(redis: Redis) -> Queue:
    return Queue(f"contract-{uuid.uuid4().hex[:8]}", connection=redis, serializer=JSONSerializer)


def test_an_enqueued_job_is_where_the_reconciler_looks(redis: Redis) -> None:
    queue = queue_in(redis)
    with redis.pipeline() as pipe:
        pipe.multi()  # as aitask enqueues: inside a MULTI of its own
        job = queue.enqueue("dispatcher_service.jobs.process_task", "task-1", pipeline=pipe)
        pipe.execute()
    fields = redis.hmget(Job.key_for(job.id), "status", "origin")
    assert fields == [b"queued", queue.name.encode()], f"rq {RQ_VERSION}: a queued job's status, origin are {fields}"
    where = redis.lpos(f"{Queue.redis_queue_namespace_prefix}{queue.name}", job.id)
    assert where == 0, f"rq {RQ_VERSION} no longer keeps a queue's jobs in the list the reconciler searches"


def test_a_scheduled_job_is_where_the_reconciler_looks(redis: Redis) -> None:
    queue = queue_in(redis)
    job = queue.enqueue_in(timedelta(seconds=60), "dispatcher_service.jobs.process_task", "task-2")
    fields = redis.hmget(Job.key_for(job.id), "status", "origin")
    assert fields == [b"scheduled", queue.name.encode()], f"rq {RQ_VERSION}: a scheduled job's fields are {fields}"
    due = redis.zscore(ScheduledJobRegistry.key_template.format(queue.name), job.id)
    assert due is not None and abs(due - (time.time() + 60)) < 5, "scheduled jobs are no longer scored by epoch second"


def test_the_worker_and_job_attributes_our_overrides_use_exist(redis: Redis) -> None:
    from aitask_common.rq_shards import ShardWorker

    queue = queue_in(redis)
    worker = type("Worker", (ShardWorker, SimpleWorker), {})([queue], connection=redis, serializer=JSONSerializer)
    job = queue.enqueue("dispatcher_service.jobs.process_task", "task-3")
    job.started_at = job.ended_at = datetime.now()
    instances = {"self": worker, "job": job, "self.execution": Execution("e", job.id, connection=redis)}
    missing = [f"{receiver}.{name}" for receiver, name in attributes_read() if not hasattr(instances[receiver], name)]
    assert not missing, f"rq {RQ_VERSION} dropped attributes DispatcherWorker uses: {sorted(missing)}"
    # set_state and heartbeat skip repeats by what rq keeps on the worker object.
    worker.register_birth()
    worker.set_state(WorkerStatus.BUSY)
    assert worker._state == WorkerStatus.BUSY and redis.hget(worker.key, "state") == b"busy"
    worker.heartbeat()
    assert isinstance(worker.last_heartbeat, datetime)
