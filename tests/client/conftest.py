"""Fixtures of the client package's tests: a user's API key on the real stack, and clients holding it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aitask_client import Client

from devstack.stack import LocalStack


def gateway_url(stack: LocalStack) -> str:
    """Envoy's address, as a user gives it to the client."""
    return f"http://127.0.0.1:{stack.ports.envoy}"


@pytest.fixture
def api_key(stack: LocalStack, user_id: str) -> str:
    """A `user` key of the test's fresh user: its calls act for that user without naming it."""
    return stack.create_api_key(user_id)


@pytest.fixture
def client(stack: LocalStack, api_key: str) -> Iterator[Client]:
    with Client(gateway_url(stack), api_key) as connected:
        yield connected
