"""`python -m dispatcher_service`."""

import os
import tempfile

# Workers are forked processes: metrics must be in multiprocess mode before
# prometheus_client is first imported.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="aitask-dispatcher-metrics-"))

from dispatcher_service.worker import main  # noqa: E402

main()
