"""Functions that decide without I/O: slugs, excerpts, path and header policy, error mapping."""

import json
from typing import Any

import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request

from titanium.errors import (
    BadGateway,
    ConfigError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    TitaniumError,
    Unauthorized,
    Unavailable,
    UpstreamTimeout,
)
from titanium.services.blog.repository import EXCERPT_LENGTH, excerpt, slugify
from titanium.services.gateway.app import _has_dot_segment, _request_headers
from titanium.web.clients import client_address
from titanium.web.context import new_request_id, request_id_var
from titanium.web.errors import response_for


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Tech Stack", "tech-stack"),
        ("  Padded   Name  ", "padded-name"),
        ("C++ & Rust!", "c-rust"),
        ("snake_case__name", "snake-case-name"),
        ("--already-slug--", "already-slug"),
        ("Über Café", "über-café"),  # letters of any script stay, lower-cased
        ("日本語 テスト", "日本語-テスト"),
        ("non\u00a0breaking\ttab\nline", "non-breaking-tab-line"),
        ("2024 in review", "2024-in-review"),
        ("!!!", ""),
        ("___", ""),  # "_" is a word character to \w, but not kept in a slug
        ("", ""),
    ],
)
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_slugify_is_idempotent() -> None:
    for name in ("Tech Stack", "C++ & Rust!", "Über Café", "a__b--c"):
        assert slugify(slugify(name)) == slugify(name)


def test_excerpt_keeps_short_text_whole() -> None:
    assert excerpt("") == ""
    assert excerpt("x" * EXCERPT_LENGTH) == "x" * EXCERPT_LENGTH


def test_excerpt_cuts_at_120_characters_and_says_so() -> None:
    cut = excerpt("x" * EXCERPT_LENGTH + "y")
    assert cut == "x" * EXCERPT_LENGTH + "..."


def test_excerpt_counts_characters_not_bytes() -> None:
    text = "é" * (EXCERPT_LENGTH + 5)
    assert excerpt(text) == "é" * EXCERPT_LENGTH + "..."


@pytest.mark.parametrize(
    ("head", "flat"),
    [
        ("one\ntwo", "one two"),
        ("one\r\ntwo", "one two"),  # one break, one space
        ("one\rtwo", "one two"),
        ("one\n\ntwo", "one  two"),
        ("tab\tstays", "tab\tstays"),
    ],
)
def test_excerpt_turns_each_line_break_into_one_space(head: str, flat: str) -> None:
    assert excerpt(head) == flat


def test_excerpt_cut_inside_a_crlf_leaves_no_control_character() -> None:
    cut = excerpt("x" * (EXCERPT_LENGTH - 1) + "\r\nmore")
    assert cut == "x" * (EXCERPT_LENGTH - 1) + " ..."


@pytest.mark.parametrize(
    "path",
    [
        "/api/users/../internal/credentials",
        "/api/users/./me",
        "/blog/..",
        "/..",
        "/api/users/alice/.",
        "..",
    ],
)
def test_dot_segments_are_refused(path: str) -> None:
    assert _has_dot_segment(path)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "/api/users/alice",
        "/api/users//me",
        "/api/users/.hidden",
        "/api/users/...",
        "/api/users/a..b",
        "/blog/static/app.3f2a.js",
        "/api/users/%2E%2E",  # still encoded: this is what the raw path looks like
    ],
)
def test_names_with_dots_are_not_dot_segments(path: str) -> None:
    assert not _has_dot_segment(path)


def _scope(headers: list[tuple[bytes, bytes]], **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "headers": headers,
        "client": ("198.51.100.7", 4000),
        "scheme": "https",
        **extra,
    }


def test_request_headers_drop_hop_by_hop_and_replace_forwarding_claims() -> None:
    incoming = [
        (b"host", b"blog.example"),
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"12"),
        (b"te", b"trailers"),
        (b"upgrade", b"websocket"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"x-forwarded-host", b"evil.example"),
        (b"x-forwarded-proto", b"gopher"),
        (b"x-request-id", b"client-chosen"),
        (b"authorization", b"Bearer t"),
        (b"content-type", b"application/json"),
        (b"x-custom", b"\xe9"),  # latin-1 bytes survive as they came
    ]
    token = request_id_var.set("rid-1")
    try:
        headers = _request_headers(_scope(incoming))
    finally:
        request_id_var.reset(token)
    assert headers == {
        "authorization": "Bearer t",
        "content-type": "application/json",
        "x-custom": "\xe9",
        "X-Request-ID": "rid-1",
        "X-Forwarded-For": "198.51.100.7",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "blog.example",
    }


def test_request_headers_without_host_or_client() -> None:
    headers = _request_headers({"type": "http", "headers": [], "client": None})
    assert headers["X-Forwarded-For"] == "unknown"
    assert headers["X-Forwarded-Proto"] == "http"
    assert "X-Forwarded-Host" not in headers
    assert headers["X-Request-ID"] == "-"  # outside a request


def _body(exc: TitaniumError | HTTPException) -> tuple[int, dict[str, Any], dict[str, str]]:
    response = response_for(exc)
    return response.status_code, json.loads(bytes(response.body)), dict(response.headers)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFound("no such post"), 404),
        (Conflict("username already taken"), 409),
        (Forbidden("not yours"), 403),
        (InvalidInput("bad"), 422),
        (BadGateway("blog-service failed to answer"), 502),
        (UpstreamTimeout("blog-service did not answer in time"), 504),
    ],
)
def test_domain_errors_map_to_their_status_with_the_message(
    error: TitaniumError, status: int
) -> None:
    code, body, headers = _body(error)
    assert code == status
    assert body == {"status": "failed", "message": error.message, "detail": error.message}
    assert "retry-after" not in headers
    assert "www-authenticate" not in headers


def test_a_subclass_maps_like_its_parent() -> None:
    class PostNotFound(NotFound):
        pass

    assert _body(PostNotFound("gone"))[0] == 404


def test_unauthorized_asks_for_a_bearer_token() -> None:
    code, _, headers = _body(Unauthorized("token expired"))
    assert (code, headers["www-authenticate"]) == (401, "Bearer")


def test_rate_limited_and_unavailable_say_when_to_retry() -> None:
    assert _body(RateLimited("slow down", retry_after=37))[2]["retry-after"] == "37"
    code, _, headers = _body(Unavailable("database is unavailable"))
    assert (code, headers["retry-after"]) == (503, "1")


def test_invalid_input_names_its_field_only_when_it_has_one() -> None:
    _, named, _ = _body(InvalidInput("must contain a letter", field="category_name"))
    assert named["errors"] == [{"field": "category_name", "message": "must contain a letter"}]
    _, unnamed, _ = _body(InvalidInput("bad"))
    assert "errors" not in unnamed


def test_an_unmapped_error_is_a_500_that_tells_nothing() -> None:
    for error in (ConfigError("POSTGRES_PASSWORD=hunter2"), TitaniumError("SELECT secret")):
        code, body, _ = _body(error)
        assert (code, body["message"], body["detail"]) == (500, "internal error", "internal error")
        assert "errors" not in body


def test_http_exceptions_keep_status_detail_and_headers() -> None:
    code, body, headers = _body(HTTPException(405, "Method Not Allowed", {"Allow": "GET, HEAD"}))
    assert (code, body["message"], headers["allow"]) == (405, "Method Not Allowed", "GET, HEAD")


def _request(headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None) -> Request:
    return Request({"type": "http", "headers": headers, "client": client})


@pytest.mark.parametrize(
    ("forwarded", "address"),
    [
        (b"203.0.113.9", "203.0.113.9"),
        # The gateway appends the peer it saw; earlier entries are the client's claims.
        (b"6.6.6.6, 203.0.113.9", "203.0.113.9"),
        (b"6.6.6.6,203.0.113.9", "203.0.113.9"),
        (b"  6.6.6.6 ,  203.0.113.9  ", "203.0.113.9"),
        (b"2001:db8::1", "2001:db8::1"),
        (b"unknown", "unknown"),
    ],
)
def test_client_address_is_the_last_forwarded_entry(forwarded: bytes, address: str) -> None:
    request = _request([(b"x-forwarded-for", forwarded)], ("10.0.0.5", 1234))
    assert client_address(request) == address


def test_client_address_without_forwarding_is_the_peer() -> None:
    assert client_address(_request([], ("10.0.0.5", 1234))) == "10.0.0.5"
    assert client_address(_request([(b"x-forwarded-for", b"")], ("10.0.0.5", 1))) == "10.0.0.5"
    assert client_address(_request([], None)) == "unknown"


@pytest.mark.parametrize(
    "incoming", ["abc", "A-Z_0.9", "x" * 128, "0" * 32, "-", "...", "trace.2024-01-01_x"]
)
def test_a_well_formed_request_id_is_kept(incoming: str) -> None:
    assert new_request_id(incoming) == incoming


@pytest.mark.parametrize(
    "incoming",
    [None, "", "x" * 129, "has space", "a/b", "semi;colon", "ünïcode", "tab\tin", "a,b", "\n"],
)
def test_a_missing_or_malformed_request_id_is_replaced_by_a_fresh_one(
    incoming: str | None,
) -> None:
    made = new_request_id(incoming)
    assert made != incoming
    assert len(made) == 32
    assert int(made, 16) >= 0
    assert new_request_id(incoming) != made  # fresh each time


def test_a_request_id_ending_in_a_newline_is_replaced() -> None:
    assert new_request_id("abc\n") != "abc\n"
