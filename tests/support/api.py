"""Factories that go through the public HTTP API: users and posts."""

import uuid
from collections.abc import Mapping
from typing import Any

import httpx


def register(
    client: httpx.Client, username: str | None = None, password: str = "correct horse"
) -> dict[str, Any]:
    """Register a user through the gateway; returns username, password, id, token, headers."""
    username = username or f"user_{uuid.uuid4().hex[:10]}"
    response = client.post(
        "/api/register",
        json={"username": username, "email": f"{username}@example.com", "password": password},
    )
    assert response.status_code == 201, response.text
    login = client.post("/api/login", json={"username": username, "password": password})
    assert login.status_code == 200, login.text
    token = login.json()["token"]
    return {
        "username": username,
        "password": password,
        "id": response.json()["id"],
        "token": token,
        "headers": {"Authorization": f"Bearer {token}"},
    }


def new_post(client: httpx.Client, headers: Mapping[str, str], **fields: Any) -> dict[str, Any]:
    """Create a post through the gateway (`fields` over a default title and content)."""
    body = {"title": "Hello", "content": "First post", **fields}
    response = client.post("/blog/api/posts", json=body, headers=dict(headers))
    assert response.status_code == 201, response.text
    post: dict[str, Any] = response.json()
    return post
