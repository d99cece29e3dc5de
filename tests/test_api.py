"""The HTTP contract, through the gateway, on SQLite and on PostgreSQL.

Every test here runs once per backend against the four services as real
processes (the `live` fixture).
"""

import time
import uuid

import pytest

from support.api import new_post, register
from support.stack import RunningStack
from support.wait import wait_until
from titanium.runner import StackError, wait_until_ready


def test_full_journey(live: RunningStack) -> None:
    writer = register(live.client)
    created = new_post(
        live.client, writer["headers"], title="Journey", content="Line one\nline two"
    )
    post_id = created["id"]
    assert created["author"] == writer["username"]
    assert created["created_at"].endswith("Z")

    read = live.client.get(f"/blog/api/posts/{post_id}")
    assert read.status_code == 200
    assert read.json()["content"] == "Line one\nline two"

    listed = live.client.get("/blog/api/posts", params={"author": writer["username"]})
    assert [item["id"] for item in listed.json()] == [post_id]
    assert listed.json()[0]["excerpt"] == "Line one line two"

    time.sleep(0.01)
    updated = live.client.patch(
        f"/blog/api/posts/{post_id}", json={"title": "Journey, revised"}, headers=writer["headers"]
    )
    assert updated.status_code == 200
    assert updated.json()["title"] == "Journey, revised"
    assert updated.json()["content"] == "Line one\nline two"
    assert updated.json()["updated_at"] > created["updated_at"]
    assert updated.json()["created_at"] == created["created_at"]

    deleted = live.client.delete(f"/blog/api/posts/{post_id}", headers=writer["headers"])
    assert deleted.status_code == 204
    gone = live.client.get(f"/blog/api/posts/{post_id}")
    assert gone.status_code == 404
    assert gone.json() == {"status": "failed", "message": "no such post", "detail": "no such post"}


def test_writes_need_a_token(live: RunningStack) -> None:
    response = live.client.post("/blog/api/posts", json={"title": "t", "content": "c"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["status"] == "failed"
    assert live.client.get("/api/users/me").status_code == 401


def test_only_the_author_changes_a_post(live: RunningStack) -> None:
    owner, other = register(live.client), register(live.client)
    post_id = new_post(live.client, owner["headers"])["id"]
    patch = live.client.patch(
        f"/blog/api/posts/{post_id}", json={"title": "mine now"}, headers=other["headers"]
    )
    assert patch.status_code == 403
    delete = live.client.delete(f"/blog/api/posts/{post_id}", headers=other["headers"])
    assert delete.status_code == 403
    assert live.client.get(f"/blog/api/posts/{post_id}").json()["title"] == "Hello"
    missing = live.client.delete("/blog/api/posts/999999", headers=other["headers"])
    assert missing.status_code == 404


def test_taken_username_is_409(live: RunningStack) -> None:
    user = register(live.client)
    again = live.client.post(
        "/api/users",
        json={"username": user["username"], "email": "x@example.com", "password": "another pw"},
    )
    assert again.status_code == 409
    assert again.json()["message"] == "username already taken"


def test_register_answers_without_password_data(live: RunningStack) -> None:
    name = f"user_{uuid.uuid4().hex[:8]}"
    response = live.client.post(
        "/api/users",
        json={"username": name, "email": f"{name}@example.com", "password": "pw123456"},
    )
    assert response.status_code == 201
    assert set(response.json()) == {"id", "username", "email", "created_at"}
    public = live.client.get(f"/api/users/{name}")
    assert set(public.json()) == {"id", "username", "created_at"}
    assert live.client.get("/api/users/nobody-at-all").status_code == 404


def test_own_profile(live: RunningStack) -> None:
    user = register(live.client)
    me = live.client.get("/api/users/me", headers=user["headers"])
    assert me.status_code == 200
    assert me.json()["username"] == user["username"]
    assert me.json()["email"] == f"{user['username']}@example.com"


def test_deleting_an_account_ends_its_tokens(live: RunningStack) -> None:
    user = register(live.client)
    post_id = new_post(live.client, user["headers"])["id"]
    assert live.client.delete("/api/users/me", headers=user["headers"]).status_code == 204
    write = live.client.post(
        "/blog/api/posts", json={"title": "t", "content": "c"}, headers=user["headers"]
    )
    assert write.status_code == 401
    assert write.json()["message"] == "the user of this token no longer exists"
    patch = live.client.patch(
        f"/blog/api/posts/{post_id}", json={"title": "x"}, headers=user["headers"]
    )
    assert patch.status_code == 401
    assert live.client.get(f"/blog/api/posts/{post_id}").status_code == 200
    assert live.client.get("/api/users/me", headers=user["headers"]).status_code == 401
    assert live.client.get(f"/api/users/{user['username']}").status_code == 404
    login = live.client.post(
        "/api/login", json={"username": user["username"], "password": user["password"]}
    )
    assert login.status_code == 401


def test_limits_of_the_schema_are_422_on_both_backends(live: RunningStack) -> None:
    user = register(live.client)
    cases = [
        ({"title": "x" * 201, "content": "c"}, "title"),
        ({"title": "t\x00", "content": "c"}, "title"),
        ({"title": "t", "content": "nul \x00 inside"}, "content"),
        ({"title": "   ", "content": "c"}, "title"),
        ({"title": "t", "content": ""}, "content"),
        ({"title": "t", "content": "c", "category_name": "n" * 51}, "category_name"),
        ({"title": "t", "content": "c", "category_id": 999999}, "category_id"),
    ]
    for body, field in cases:
        response = live.client.post("/blog/api/posts", json=body, headers=user["headers"])
        assert response.status_code == 422, (body, response.text)
        assert field in [error["field"] for error in response.json()["errors"]], response.text
    long_name = live.client.post(
        "/api/users", json={"username": "u" * 101, "email": "a@b.io", "password": "pw123456"}
    )
    assert long_name.status_code == 422
    exactly_200 = live.client.post(
        "/blog/api/posts", json={"title": "x" * 200, "content": "c"}, headers=user["headers"]
    )
    assert exactly_200.status_code == 201


def test_paging_and_filters(live: RunningStack) -> None:
    author = register(live.client)
    slug = f"paging-{uuid.uuid4().hex[:6]}"
    ids = [
        new_post(live.client, author["headers"], title=f"p{i}", category_name=slug)["id"]
        for i in range(5)
    ]
    page = live.client.get("/blog/api/posts", params={"category": slug, "limit": 2, "offset": 1})
    assert page.status_code == 200
    assert page.headers["x-total-count"] == "5"
    assert [item["id"] for item in page.json()] == [ids[3], ids[2]]
    assert page.json()[0]["category"]["slug"] == slug
    assert live.client.get("/blog/api/posts", params={"limit": 0}).status_code == 422
    assert live.client.get("/blog/api/posts", params={"limit": 101}).status_code == 422
    assert live.client.get("/blog/api/posts", params={"offset": -1}).status_code == 422
    nobody = live.client.get("/blog/api/posts", params={"author": "no-such-author"})
    assert nobody.json() == []
    assert nobody.headers["x-total-count"] == "0"
    # A page past the end has no row to carry the count: it is counted on its own.
    past = live.client.get("/blog/api/posts", params={"category": slug, "offset": 5})
    assert past.json() == []
    assert past.headers["x-total-count"] == "5"


def test_excerpt_is_120_characters_plus_ellipsis(live: RunningStack) -> None:
    author = register(live.client)
    content = "가" * 100 + "\n" + "b" * 50
    new_post(live.client, author["headers"], content=content)
    item = live.client.get("/blog/api/posts", params={"author": author["username"]}).json()[0]
    assert item["excerpt"] == "가" * 100 + " " + "b" * 19 + "..."


def test_categories(live: RunningStack) -> None:
    seeded = live.client.get("/blog/api/categories").json()
    assert [(c["id"], c["name"], c["slug"]) for c in seeded[:3]] == [
        (1, "기술 스택", "tech-stack"),
        (2, "Troubleshooting", "troubleshooting"),
        (3, "Test", "test"),
    ]
    author = register(live.client)
    by_id = new_post(live.client, author["headers"], category_id=2)
    assert by_id["category"] == {
        "id": 2,
        "name": "Troubleshooting",
        "slug": "troubleshooting",
        "color": "#ef4444",
    }
    same_by_slug = new_post(live.client, author["headers"], category_name="test")
    assert same_by_slug["category"]["id"] == 3
    name = f"Cloud Native {uuid.uuid4().hex[:4]}"
    fresh = new_post(live.client, author["headers"], category_name=name)
    assert fresh["category"]["name"] == name
    assert fresh["category"]["slug"] == name.lower().replace(" ", "-")
    default = new_post(live.client, author["headers"])
    assert default["category"]["slug"] == "uncategorized"
    counts = {c["slug"]: c["post_count"] for c in live.client.get("/blog/api/categories").json()}
    assert counts[fresh["category"]["slug"]] == 1
    moved = live.client.patch(
        f"/blog/api/posts/{fresh['id']}", json={"category_id": 1}, headers=author["headers"]
    )
    assert moved.json()["category"]["slug"] == "tech-stack"
    both = live.client.post(
        "/blog/api/posts",
        json={"title": "t", "content": "c", "category_id": 1, "category_name": "x"},
        headers=author["headers"],
    )
    assert both.status_code == 422


def test_internal_routes_are_not_reachable_through_the_gateway(live: RunningStack) -> None:
    user = register(live.client)
    body = {"username": user["username"], "password": user["password"]}
    with live.service("users") as direct:
        assert direct.post("/internal/credentials", json=body).status_code == 200
    for path in [
        "/internal/credentials",
        "/api/users/../../internal/credentials",
        "/api/users/%2e%2e/%2e%2e/internal/credentials",
        "/blog/../internal/credentials",
        "/api/users/../../internal/users/1",
    ]:
        response = live.client.post(path, json=body)
        assert response.status_code in (404, 405), (path, response.status_code)
        assert "id" not in response.text


def test_request_id_is_created_and_passed_on(live: RunningStack) -> None:
    response = live.client.get("/blog/api/posts")
    generated = response.headers["x-request-id"]
    assert len(generated) >= 16
    traced = live.client.get("/blog/api/posts", headers={"X-Request-ID": "trace-123"})
    assert traced.headers["x-request-id"] == "trace-123"
    # The log line is written just after the response is sent: give it a moment.
    assert live.stack.log_dir is not None
    log_file = live.stack.log_dir / "blog.log"
    wait_until(
        lambda: "rid=trace-123" in log_file.read_text(), 5, "the request's log line", interval=0.05
    )
    assert "GET /blog/api/posts 200" in log_file.read_text()
    assert "rid=trace-123" in log_file.read_text()


def test_operational_endpoints_on_every_service(live: RunningStack) -> None:
    for name in ("gateway", "auth", "users", "blog"):
        with live.service(name) as client:
            assert client.get("/health").json()["status"] == "ok"
            ready = client.get("/ready")
            assert ready.status_code == 200, ready.text
            metrics = client.get("/metrics")
            assert "http_requests_total" in metrics.text
            assert client.get("/stats").json()["requests_total"] >= 1
    with live.service("blog") as blog:
        assert blog.get("/ready").json()["database"] == live.backend
        schema = blog.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_errors_are_json_and_bodies_are_bounded(live: RunningStack) -> None:
    unknown = live.client.get("/no/such/path")
    assert unknown.status_code == 404
    assert unknown.json()["status"] == "failed"
    bad_json = live.client.post(
        "/api/login", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 422
    big = live.client.post(
        "/api/login",
        content=b"x" * (1024 * 1024 + 1),
        headers={"content-type": "application/json"},
    )
    assert big.status_code == 413
    assert live.client.get("/health").status_code == 200


def test_a_body_that_is_not_utf8_is_a_clear_400(live: RunningStack) -> None:
    # Found by tests/test_fuzz.py (negative mode); kept as a regular test.
    user = register(live.client)
    for path, headers in [("/api/login", {}), ("/blog/api/posts", user["headers"])]:
        response = live.client.post(
            path,
            content=b"b\xff\xfe\x13\xa7g",
            headers={**headers, "content-type": "application/json"},
        )
        assert response.status_code == 400
        assert response.json() == {
            "status": "failed",
            "message": "There was an error parsing the body",
            "detail": "There was an error parsing the body",
        }


def test_the_gateway_relays_headers_once_and_head_lengths(live: RunningStack) -> None:
    response = live.client.get("/blog/api/posts")
    assert len(response.headers.get_list("date")) == 1
    assert len(response.headers.get_list("x-request-id")) == 1
    head = live.client.head("/blog/")
    assert int(head.headers["content-length"]) == len(live.client.get("/blog/").content)


def test_validation_messages_read_plainly(live: RunningStack) -> None:
    user = register(live.client)
    response = live.client.post(
        "/blog/api/posts", json={"title": " ", "content": "c"}, headers=user["headers"]
    )
    assert response.json()["errors"] == [{"field": "title", "message": "must not be empty"}]


def test_blog_pages_are_served(live: RunningStack) -> None:
    page = live.client.get("/blog/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert live.client.get("/blog/posts/1").status_code == 200
    home = live.client.get("/", follow_redirects=False)
    assert home.headers["location"] == "/blog/"


def test_gateway_reports_a_stopped_service(live: RunningStack) -> None:
    live.stack.stop_one("auth")
    try:
        login = live.client.post("/api/login", json={"username": "someone", "password": "pw"})
        assert login.status_code == 503
        assert login.json()["message"] == "auth-service is unavailable"
        assert live.client.get("/blog/api/posts").status_code == 200
        assert live.client.get("/ready").status_code == 503
    finally:
        # The stack is shared by every test on this backend: leave it as found, with
        # auth-service back and the gateway seeing it, whatever failed above.
        live.stack.start_one("auth")
        for service in ("auth", "gateway"):
            try:
                wait_until_ready(
                    f"{live.stack.url(service)}/ready", live.stack.processes[service], timeout=30
                )
            except StackError as exc:
                pytest.fail(
                    f"{service} is not ready again after restarting auth-service: {exc.message}",
                    pytrace=False,
                )
