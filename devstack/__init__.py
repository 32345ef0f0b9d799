"""The local stack (infrastructure + services) as one definition, used by `make run`, the tests and bench.

`processes` defines every process; `__main__` runs them under honcho (`make run`); `stack.LocalStack`
supervises them from Python (the tests' `stack` fixture, bench/harness), and `stack.LoneRedis` runs
Redis alone (the fast tier's `redis_server` fixture).
"""
