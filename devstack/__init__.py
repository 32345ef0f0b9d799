"""The local stack (infrastructure + services) as one definition, used by `make run` and by the tests."""
