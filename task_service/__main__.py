"""`python -m task_service`."""

from task_service.server import main

main()
