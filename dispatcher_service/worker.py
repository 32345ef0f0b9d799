"""Starts the RQ worker pool: N in-process workers draining critical, default, low, each with a poller."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import Any, ClassVar

from pymongo import MongoClient
from redis import Redis
from rq.connections import parse_connection
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus
from rq.worker_pool import ForkProcess, WorkerData, WorkerPool, run_worker

from aitask_common.dependencies import wait_for_dependencies
from aitask_common.ledger import Ledger
from aitask_common.logging import configure_logging, get_logger
from aitask_common.metrics import serve_metrics
from aitask_common.mongo import client_options
from aitask_common.outputs import OutputLinks, open_output_store
from aitask_common.queue_shards import layout, priority_of
from aitask_common.queue_state import paused_queues
from aitask_common.queues import QUEUE_ORDER
from aitask_common.redis_clients import REDIS_DOWN, redis_client, rq_connection, wait_for_redis
from aitask_common.rq_shards import ShardWorker, shard_queue, shard_queue_class, shard_worker_class
from aitask_common.settings import load_settings
from aitask_common.tasks import COLLECTION
from aitask_common.tracing import configure_tracing, job_span
from aitask_common.webhooks import MESSAGES_COLLECTION, install_output_links
from dispatcher_service.jobs import Runtime, install_runtime, run_poll
from dispatcher_service.liveness import IDLE_BEAT_SECONDS, WorkerDeadline
from dispatcher_service.metrics import QueueAndRegistryCollector
from dispatcher_service.polls import Poller
from dispatcher_service.reconciler import Reconciler
from dispatcher_service.retention import RetentionSweeper
from dispatcher_service.scheduler import OutageTolerantScheduler
from dispatcher_service.settings import DispatcherSettings
from dispatcher_service.webhook_delivery import WebhookBacklogCollector, WebhookDelivery

log = get_logger(__name__)

# RQ refreshes a worker's heartbeat about four times per job; its key lives for minutes.
HEARTBEAT_EVERY_SECONDS = 1.0
SUSPENSION_CHECK_EVERY_SECONDS = 1.0
# How a worker waits for Redis to come back (backoff between pings).
REDIS_WAIT_FIRST_SECONDS = 0.5
REDIS_WAIT_MAX_SECONDS = 5.0
# How often a worker without the scheduler tries for its locks: a dispatcher killed with SIGKILL holds
# them until they expire (RQ's 61 s), and RQ itself tries again only at its 10-minute maintenance.
SCHEDULER_LOCK_RETRY_SECONDS = 5.0
# How long a new worker waits for its channels to the providers before it takes jobs (each first task paid about
# 100 ms for its connection); one not ready by then is connected on first use.
PROVIDER_CONNECT_SECONDS = 1.0


# BLPOP rounds while a priority is paused: its resume is seen within about this long.
PAUSED_ROUND_SECONDS = 1
# What the workers listen on while every priority is paused: no job is ever put in it.
ALL_PAUSED_QUEUE = "aitask-all-paused"


class DispatcherWorker(ShardWorker, SimpleWorker):
    """A SimpleWorker that also runs this process's poller, and sends RQ's bookkeeping around a job
    in three round trips instead of eight (tests/dispatcher_service/test_worker.py counts them).

    RQ writes the execution record and the job's start in two pipelines, re-stamps the job's
    heartbeat when it returns, WATCHes and reads its dependents before the success pipeline, and
    marks the worker idle after it. Here the start is one pipeline and the end another (aitask
    never enqueues with `depends_on`, and runs no callbacks between the job's end and its result);
    heartbeats and suspension checks less than a second apart are skipped. The failure path is
    RQ's own. The overrides follow rq 2.12's worker (pinned in pyproject.toml).

    A priority an operator paused (AdminService.PauseQueue) is left out of the queues it takes from, read at
    most a second apart; a job popped from one just paused (a BLPOP round started before) goes back to its
    queue's head untouched.

    RQ's work loop quits on any Redis error outside its BLPOP (marking the worker idle, a heartbeat,
    the suspension check, recording a job's end): here each of those waits for Redis with backoff,
    logging once, and carries on. A job whose end RQ could not record has its outcome in MongoDB (or
    kept in Redis, jobs.py); the reconciler sees to its task. The scheduler this worker started waits the
    outage out too (OutageTolerantScheduler); one that died otherwise is started again.
    """

    # RQ's own wait between failed BLPOPs doubles up to a minute: an idle worker would listen again that long
    # after Redis returned.
    max_connection_wait_time = REDIS_WAIT_MAX_SECONDS

    log_result_lifespan = False
    # What main read at start-up, set by `build_pool`.
    settings: ClassVar[DispatcherSettings]
    poller: Poller | None = None
    _next_suspension_check = 0.0
    _next_scheduler_lock_try = 0.0
    _paused: frozenset[str] = frozenset()
    _paused_read_at = 0.0
    # Replaced in bootstrap by this process's file (liveness.py); a no-op until then.
    deadline = WorkerDeadline("")
    # The client of every key but RQ's (whose client, `connection`, reaches this worker's shard alone on a
    # cluster); the runtime's, from bootstrap.
    main_redis: Redis

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        # Connections are opened here, in the worker process, not in the pool's parent before the fork.
        runtime = Runtime.open(self.settings, self.shard)
        install_runtime(runtime)
        runtime.providers.connect(timeout=PROVIDER_CONNECT_SECONDS)
        self.main_redis = runtime.redis
        super().bootstrap(*args, **kwargs)
        install_output_links(OutputLinks(self.settings))
        self.poller = Poller(runtime.redis, run_poll, self.shard)
        self.poller.start()
        self.deadline = WorkerDeadline(self.settings.worker_deadline_dir)
        self.deadline.idle()

    def teardown(self) -> None:
        self.deadline.remove()
        if self.poller is not None:
            self.poller.stop()
        super().teardown()  # type: ignore[no-untyped-call]  # rq leaves it unannotated

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is None:
            # RQ's listening loop beats before each BLPOP round: where a pause or resume is noticed.
            self._refresh_paused_queues()
        last: datetime | None = self.last_heartbeat
        if timeout is None and pipeline is None and last and (now() - last).total_seconds() < HEARTBEAT_EVERY_SECONDS:
            return
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        self.deadline.idle()
        try:
            super().heartbeat(timeout, pipeline)
            self._restart_dead_scheduler()
        except REDIS_DOWN as error:
            self._wait_for_redis(error)
            super().heartbeat(timeout, pipeline)

    def check_for_suspension(self, burst: bool) -> None:
        # RQ asks Redis before every job (a heartbeat plus EXISTS rq:suspended); `rq suspend` still takes
        # effect within a second.
        if time.monotonic() < self._next_suspension_check:
            return
        self._next_suspension_check = time.monotonic() + SUSPENSION_CHECK_EVERY_SECONDS
        try:
            self._restart_dead_scheduler()
            super().check_for_suspension(burst)
        except REDIS_DOWN as error:
            self._wait_for_redis(error)

    def _follow_paused_queues(self) -> None:
        """Take work only from the priorities not paused; with all of them paused, listen on a queue no job is
        ever put in (RQ cannot listen on none), in rounds of a second, until one is resumed."""
        self._paused = frozenset(paused_queues(self.main_redis))
        self._paused_read_at = time.monotonic()
        open_queues = [target for target in self.queues if priority_of(target.name) not in self._paused]
        self._ordered_queues = open_queues or [shard_queue(self.connection, ALL_PAUSED_QUEUE, self.shard)]

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # BLPOP rounds of IDLE_BEAT_SECONDS, not RQ's 405 s: each round's heartbeat moves the liveness deadline.
        # A worker without the scheduler asks for its locks each round (heartbeat): rounds of at most
        # SCHEDULER_LOCK_RETRY_SECONDS then, or an idle dispatcher would run no delayed job for minutes.
        if timeout is not None:
            timeout = min(timeout, IDLE_BEAT_SECONDS if self._runs_scheduler() else int(SCHEDULER_LOCK_RETRY_SECONDS))
        while True:
            try:
                # While a priority is paused, rounds of a second, so that its resume is seen within one.
                rounds = timeout if timeout is None or not self._paused else min(timeout, PAUSED_ROUND_SECONDS)
                result = super().dequeue_job_and_maintain_ttl(rounds, max_idle_time)
                if result is None or not self._paused_since_listening(result[1]):
                    return result
                self._put_back(*result)
            except REDIS_DOWN as error:
                self._wait_for_redis(error)

    def _refresh_paused_queues(self) -> None:
        """Read the paused set again if the last read is a second old (a failed read keeps the last one)."""
        if time.monotonic() - self._paused_read_at >= SUSPENSION_CHECK_EVERY_SECONDS:
            with contextlib.suppress(*REDIS_DOWN):
                self._follow_paused_queues()

    def _paused_since_listening(self, source: Queue) -> bool:
        self._refresh_paused_queues()
        return priority_of(source.name) in self._paused

    def _put_back(self, job: Job, source: Queue) -> None:
        """Return a job popped from a paused queue to its head (and out of the list RQ moves a lone queue's
        jobs to), as if never taken."""
        with self.connection.pipeline() as pipe:
            pipe.lpush(source.key, job.id)
            pipe.lrem(source.intermediate_queue_key, 1, job.id)
            pipe.execute()
        log.info("job left in its paused queue", queue=source.name, job_id=job.id)

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()
        except REDIS_DOWN as error:
            self._wait_for_redis(error)

    def _wait_for_redis(self, error: Exception) -> None:
        """Ping Redis with backoff until it answers, or a stop is requested; log once each way."""
        log.warning("Redis unreachable; the worker waits for it", worker=self.name, error=str(error))
        # Waiting out an outage is progress: it must not get the pod restarted (deadline.idle).
        waited = wait_for_redis(
            self.connection,
            lambda: self._stop_requested,
            REDIS_WAIT_FIRST_SECONDS,
            REDIS_WAIT_MAX_SECONDS,
            self.deadline.idle,
        )
        if waited is not None:
            log.info("Redis reachable again", worker=self.name, waited_seconds=round(waited, 1))

    def _runs_scheduler(self) -> bool:
        process = self.scheduler._process if self.scheduler is not None else None
        return process is not None and process.is_alive()

    def stop_scheduler(self) -> None:
        super().stop_scheduler()  # type: ignore[no-untyped-call]  # rq leaves it unannotated
        # A scheduler that died (killed) left its locks behind: release them (only if still
        # its own), or the next dispatcher's workers would wait out their 61 s before delayed jobs run again.
        if self.scheduler is not None:
            with contextlib.suppress(*REDIS_DOWN):
                self.scheduler.release_locks()

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = "%H:%M:%S",
        log_format: str = "%(asctime)s %(message)s",
    ) -> None:
        # RQ's (its defaults too, tests/dispatcher_service/test_rq_contract.py), with a scheduler that rides out
        # Redis outages.
        self.scheduler = OutageTolerantScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
            settings=self.settings,
        )
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return
        if not burst:
            self.scheduler.start()
            return
        try:
            self.scheduler.register_birth()
            self.scheduler.enqueue_scheduled_jobs()
        finally:
            self.scheduler.release_locks()
            self.scheduler.register_death()

    def _restart_dead_scheduler(self) -> None:
        """Start the scheduler this worker started again if it died (killed, or of a bug), or take
        the scheduler locks a dead worker left: a local check; RQ itself would look only at its next
        maintenance, minutes later."""
        scheduler = self.scheduler
        # A warm shutdown stops the scheduler first: it must stay stopped (a worker that dies with a scheduler
        # running leaves it holding the locks, and delayed jobs to it alone).
        if self._stop_requested or scheduler is None or self._runs_scheduler():
            return
        if scheduler._process is None:
            # Another worker held the locks when this one started; they may have died with it since.
            if time.monotonic() < self._next_scheduler_lock_try:
                return
            self._next_scheduler_lock_try = time.monotonic() + SCHEDULER_LOCK_RETRY_SECONDS
        else:
            log.info("restarting the RQ scheduler", worker=self.name, exitcode=scheduler._process.exitcode)
        scheduler.acquire_locks(auto_start=True)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None and state == getattr(self, "_state", None):
            return
        super().set_state(state, pipeline)

    def execute_job(self, job: Job, queue: Queue) -> None:
        # SimpleWorker's, less prepare_execution: prepare_job_execution records the execution too.
        self.deadline.busy(job.timeout)
        try:
            # A child of the trace that enqueued the job (the create's, or the run that scheduled this one).
            with job_span(str(job.func_name).rpartition(".")[2], job.meta.get("trace"), task_id=str(job.args[0])):
                self.perform_job(job, queue)
        except REDIS_DOWN as error:
            # RQ could not record the job's start or end; the task's state is in MongoDB.
            self._wait_for_redis(error)
        self.deadline.idle()
        self.set_state(WorkerStatus.IDLE)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        heartbeat_ttl = self.get_heartbeat_ttl(job)
        with self.connection.pipeline() as pipeline:
            self.execution = Execution.create(job, heartbeat_ttl, pipeline=pipeline, worker_name=self.name)
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            self.set_current_job_id(job.id, pipeline=pipeline)
            self.set_current_job_working_time(0, pipeline=pipeline)
            self.heartbeat(heartbeat_ttl, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline=pipeline)  # also stamps the job's heartbeat
            if remove_from_intermediate_queue:
                intermediate = self.queue_class(job.origin, connection=self.connection).intermediate_queue_key
                pipeline.lrem(intermediate, 1, job.id)
            pipeline.execute()

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        # RQ also re-stamps the job's heartbeat, to cover success or failure callbacks; there are none.
        job.ended_at = now()

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry) -> None:
        assert job.started_at is not None and job.ended_at is not None
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        with self.connection.pipeline() as pipeline:
            self.increment_successful_job_count(pipeline=pipeline)
            self.increment_total_working_time(job.ended_at - job.started_at, pipeline)
            job._handle_success(
                result_ttl,
                pipeline=pipeline,
                worker_name=self.name,
                execution_id=self.execution.id if self.execution else None,
                execution_started_at=self.execution.created_at if self.execution else None,
                execution_ended_at=job.ended_at,
            )
            job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
            self.cleanup_execution(job, pipeline=pipeline)
            self.set_state(WorkerStatus.IDLE, pipeline=pipeline)
            pipeline.execute()


class ShardedWorkerPool(WorkerPool):
    """RQ's WorkerPool, each worker serving one queue shard (aitask_common.queue_shards): a new or respawned worker
    takes the shard with the fewest live workers, so every shard is served while the pool has one per shard."""

    def __init__(self, main: Redis, served: list[int], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Whence each shard's RQ client (aitask_common.redis_clients.rq_connection), which its workers re-make.
        self.main = main
        self.served = served
        self.shard_of_worker: dict[str, int] = {}

    def get_worker_process(self, name: str, burst: bool, _sleep: float = 0, logging_level: str = "INFO") -> Any:
        alive = [self.shard_of_worker[worker] for worker in self.worker_dict if worker in self.shard_of_worker]
        shard = min(self.served, key=alive.count)
        self.shard_of_worker[name] = shard
        tag = layout().tag(shard)
        connection_class, pool_class, pool_kwargs = parse_connection(rq_connection(self.main, shard))
        return ForkProcess(
            target=run_worker,
            args=(tag + name, [layout().queue_name(str(priority), shard) for priority in QUEUE_ORDER]),
            kwargs={
                "connection_class": connection_class,
                "connection_pool_class": pool_class,
                "connection_pool_kwargs": pool_kwargs,
                "_sleep": _sleep,
                "burst": burst,
                "logging_level": logging_level,
                "worker_class": shard_worker_class(self.worker_class, tag),
                "queue_class": shard_queue_class(tag),
                "serializer": self.serializer,
            },
            name=f"Worker {name} of shard {shard} (WorkerPool {self.name})",
        )

    def handle_dead_worker(self, worker_data: WorkerData) -> None:
        super().handle_dead_worker(worker_data)
        self.shard_of_worker.pop(worker_data.name, None)


def build_pool(settings: DispatcherSettings) -> WorkerPool:
    """A pool of `worker_concurrency` forked processes, each running jobs in-process, spread over the queue shards
    served.

    SimpleWorker (no fork per job) keeps each process's MongoDB client, Redis
    pool and gRPC channels alive across jobs; the pool restarts a dead worker.
    """

    class PoolWorker(DispatcherWorker):
        """A DispatcherWorker with this pool's settings: RQ builds each worker itself, from its class."""

    PoolWorker.settings = settings
    main = redis_client(settings)
    served = settings.served_shards
    return ShardedWorkerPool(
        main,
        served,
        [str(name) for name in QUEUE_ORDER],
        connection=rq_connection(main, served[0]),
        num_workers=settings.worker_concurrency,
        worker_class=PoolWorker,
        serializer=JSONSerializer,
    )


def main() -> None:
    """Entry point of `python -m dispatcher_service`."""
    settings = load_settings(DispatcherSettings)
    configure_logging("dispatcher", settings)
    configure_tracing("dispatcher", settings)
    redis = redis_client(settings)
    # Metrics first: the process is up (its start-up probe passes) while it waits for the datastores.
    mongo = MongoClient(**client_options(settings, "dispatcher-reconciler"))
    webhook_messages = mongo[settings.mongo_database][MESSAGES_COLLECTION]
    serve_metrics(
        settings.metrics_host,
        settings.metrics_port,
        [QueueAndRegistryCollector(redis), WebhookBacklogCollector(webhook_messages)],
    )
    wait_for_dependencies(settings)
    install_output_links(OutputLinks(settings))  # the delivery loop stores lost final messages
    database = mongo[settings.mongo_database]
    Reconciler(settings, redis, database[COLLECTION], Ledger(database, settings.ledger_starting_credits)).start()
    RetentionSweeper(
        settings, redis, mongo[settings.mongo_database][COLLECTION], open_output_store(settings, mongo)
    ).start()
    WebhookDelivery(settings).start()
    build_pool(settings).start(logging_level=settings.log_level.upper())
