"""`python -m dispatcher_service`."""

from dispatcher_service.worker import main

main()
