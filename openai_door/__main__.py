"""`python -m openai_door`."""

from openai_door.server import main

main()
