"""Start-up wait for MongoDB and Redis, so processes may start in any order (Compose, Kubernetes, honcho).

It waits as long as it takes: a datastore down when a pod starts is an outage to ride out, not a reason to exit
(which Kubernetes would turn into CrashLoopBackOff, with ever longer back-offs after the datastore returns).
"""

from __future__ import annotations

import logging

from pymongo import MongoClient
from tenacity import before_sleep_log, retry, wait_exponential

from aitask_common.mongo import client_options
from aitask_common.redis_clients import redis_client
from aitask_common.settings import ServiceSettings

_log = logging.getLogger(__name__)


@retry(wait=wait_exponential(multiplier=0.2, max=3), before_sleep=before_sleep_log(_log, logging.WARNING))
def wait_for_dependencies(settings: ServiceSettings, mongo: bool = True) -> None:
    """Block until Redis (and MongoDB, unless `mongo` is False) answer a ping, however long that takes."""
    redis_client(settings, socket_timeout=2).ping()
    if mongo:
        with MongoClient(**client_options(settings, "startup-check")) as client:
            client.admin.command("ping")
