"""AdminService's API keys through Envoy's REST paths: create (the key shown once), list (never a secret), revoke."""

from __future__ import annotations

from typing import Any

import httpx

from devstack.stack import LocalStack
from tests.conftest import wait_until


def keys(rest: httpx.Client) -> dict[str, dict[str, Any]]:
    response = rest.get("/api/v1/admin/keys")
    assert response.status_code == 200, response.text
    return {key["key_id"]: key for key in response.json()["data"]}


def test_a_key_made_over_the_api_works_at_once_and_stops_when_revoked(
    stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    response = rest.post("/api/v1/admin/keys", json={"user_id": user_id, "role": "viewer", "name": "on-call laptop"})
    assert response.status_code == 200, response.text
    created = response.json()["data"]
    whole, key = created["api_key"], created["key"]
    assert whole.startswith(f"ak_{key['key_id']}_")
    assert (key["user_id"], key["role"], key["name"]) == (user_id, "viewer", "on-call laptop") and "revoked" not in key

    listing = rest.get("/api/v1/admin/keys")
    assert whole.split("_")[-1] not in listing.text  # the secret is never shown again
    assert keys(rest)[key["key_id"]] == key

    with stack.rest(whole) as as_viewer:
        assert as_viewer.get("/api/v1/admin/queues").status_code == 200
        assert key["key_id"] in keys(as_viewer)  # a viewer reads the keys...
        refused = as_viewer.post("/api/v1/admin/keys", json={"user_id": user_id, "role": "admin"})
        assert refused.status_code == 403  # ...and makes none

        revoked = rest.post(f"/api/v1/admin/keys/{key['key_id']}/revoke", json={})
        assert revoked.status_code == 200 and revoked.json()["data"]["revoked"], revoked.text
        again = rest.post(f"/api/v1/admin/keys/{key['key_id']}/revoke", json={})
        assert again.status_code == 200 and again.json()["message"] == "key was revoked already"
        # The test stack caches verified keys for 2 s.
        wait_until(lambda: as_viewer.get("/api/v1/admin/queues").status_code == 401, timeout=10)

    audit = [(entry["action"], entry["target"]) for entry in rest.get("/api/v1/admin/audit").json()["data"][:3]]
    assert audit[-1] == ("CreateApiKey", f"viewer key for user {user_id}")
    assert audit[-2] == ("RevokeApiKey", f"key {key['key_id']}")
    assert whole not in str(audit)


def test_a_bad_key_request_is_named_and_makes_nothing(stack: LocalStack, rest: httpx.Client, user_id: str) -> None:
    before = set(keys(rest))
    for body, field in [
        ({"user_id": user_id, "role": "owner"}, "role"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": user_id, "rate_limit": -1}, "rate_limit"),
        ({"user_id": user_id, "name": "x" * 201}, "name"),
    ]:
        response = rest.post("/api/v1/admin/keys", json=body)
        assert response.status_code == 400 and response.json()["message"].startswith(f"{field}:"), response.text
    assert set(keys(rest)) == before
    assert rest.post("/api/v1/admin/keys/0123456789abcdef/revoke", json={}).status_code == 404
    with stack.rest(stack.create_api_key(user_id)) as as_user:
        assert as_user.get("/api/v1/admin/keys").status_code == 403
        assert as_user.post("/api/v1/admin/keys", json={"user_id": user_id, "role": "admin"}).status_code == 403
