# Queue tools (issue 4), included by the main Makefile. Redis and MongoDB come from REDIS_URL / MONGO_URL;
# unset, from .local/stack.env, where `make run` writes the local stack's URLs.
# QUEUE picks one queue (critical, default, low) or all of them: make redis-queue-clear QUEUE=default
QUEUE ?= all

.PHONY: redis-queue-status redis-queue-clear redis-queue-clear-force redis-queue-requeue-failed redis-queue-breakers storage-check storage-sweep billing-check billing-grant

redis-queue-status: install ## Jobs per RQ queue and state, the oldest queued job's age, the polls waiting, the cancelled tasks
	$(PYTHON) -m dispatcher_service.queue_admin status

redis-queue-clear: install ## Remove QUEUE's queued and scheduled jobs after confirmation; their unfinished tasks fail
	$(PYTHON) -m dispatcher_service.queue_admin clear $(QUEUE)

redis-queue-clear-force: install ## Same as redis-queue-clear without asking
	$(PYTHON) -m dispatcher_service.queue_admin clear $(QUEUE) --force

redis-queue-requeue-failed: install ## Put the jobs of QUEUE's RQ failed registry back on their queue, never a cancelled (or final) task's
	$(PYTHON) -m dispatcher_service.queue_admin requeue-failed $(QUEUE)

storage-check: install ## Stored outputs without a task, tasks whose output is missing (exit 3 when any; REPAIR=1 fixes both)
	$(PYTHON) -m dispatcher_service.retention check $(if $(REPAIR),--repair)

storage-sweep: install ## One retention pass now (OUTPUT_RETENTION_DAYS, TASK_RETENTION_DAYS; the dispatcher runs one every 10 min)
	$(PYTHON) -m dispatcher_service.retention sweep

billing-check: install ## Every user's ledger adds up, each task charged at most once, no final task keeps its reservation (exit 3 if not)
	$(PYTHON) -m dispatcher_service.billing_admin check

billing-grant: install ## Add (or, negative, take) credits: make billing-grant USER_ID=alice AMOUNT=1000 [NOTE="welcome"]
	$(PYTHON) -m dispatcher_service.billing_admin grant "$(USER_ID)" "$(AMOUNT)" $(if $(NOTE),--note "$(NOTE)")

redis-queue-breakers: install ## Every circuit breaker (per provider instance and model): state, when it half-opens, its window
	$(PYTHON) -m dispatcher_service.queue_admin breakers
