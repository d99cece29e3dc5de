"""blog-service: posts and categories API under /blog/api, and the web UI under /blog/."""

from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response, status
from pydantic_core import to_json

from titanium.config import ServiceName, Settings
from titanium.db.engine import Database
from titanium.db.revisions import check_schema
from titanium.db.tables import INTEGER_MAX
from titanium.security.tokens import TokenVerifier
from titanium.services.blog.cache import Cached, ChangeListener, DataVersionWatch, ResponseCache
from titanium.services.blog.repository import BlogRepository, CategoryChoice, PostFilter
from titanium.services.blog.schemas import Category, NewPost, Post, PostChanges, PostSummary
from titanium.web.accounts import ActiveIdentity
from titanium.web.client import Downstream, service_pools
from titanium.web.metrics import Metric, counter, counter_family, gauge, pool_families
from titanium.web.service import install_common, service_app

PostIdPath = Annotated[int, Path(ge=1, le=INTEGER_MAX)]


def _repository_of(request: Request) -> BlogRepository:
    return BlogRepository(request.app.state.db)


async def _repository(request: Request) -> BlogRepository:
    return _repository_of(request)


Blog = Annotated[BlogRepository, Depends(_repository)]


def _choice(body: NewPost | PostChanges) -> CategoryChoice:
    return CategoryChoice(body.category_name, body.category_id)


def create_app(
    settings: Settings, *, downstreams: Mapping[ServiceName, Downstream] | None = None
) -> FastAPI:
    """Build blog-service (given `downstreams` stay the caller's); config errors surface here."""
    db = Database(settings, "blog")
    verifier = TokenVerifier(settings)

    cache = ResponseCache(settings.blog_cache_entries, settings.blog_cache_bytes)
    # How this process hears of other writers' changes depends on the backend.
    watch: ChangeListener | DataVersionWatch = (
        ChangeListener(settings, cache)
        if db.backend == "postgresql"
        else DataVersionWatch(settings.sqlite_path("blog"), cache)
    )

    cache_enabled = settings.blog_cache_entries > 0 and settings.blog_cache_bytes > 0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_pools(settings, ["users"], downstreams) as pools:
            app.state.users = pools["users"]
            if cache_enabled:
                watch.start()
            yield
            await watch.stop()
        await db.dispose()

    app = service_app("blog", lifespan)
    app.state.db = db
    app.state.verifier = verifier
    app.state.cache = cache
    # Every write, through any endpoint, empties this process's cache at once, so a
    # client reads what it just wrote; other replicas hear it from PostgreSQL.
    db.after_write(cache.invalidate)

    async def ready(_request: Request) -> dict[str, Any]:
        return await check_schema(db)

    async def stats(_request: Request) -> dict[str, Any]:
        counts = await BlogRepository(db).count()
        held = {"entries": len(cache), "bytes": cache.size_bytes, "max_bytes": cache.max_bytes}
        return {"database": db.backend, **counts, "cache": held}

    def collect() -> list[Metric]:
        lookups = {"hit": cache.hits, "miss": cache.misses}
        return [
            *pool_families(db.gates()),
            counter_family("titanium_cache_requests", "Response cache lookups", "result", lookups),
            counter("titanium_cache_evictions", "Entries pushed out by a bound", cache.evictions),
            gauge("titanium_cache_bytes", "Bytes held by the response cache", cache.size_bytes),
            gauge("titanium_cache_entries", "Entries held by the response cache", len(cache)),
            gauge("titanium_cache_enabled", "1 when the cache is configured on", cache_enabled),
            gauge("titanium_cache_live", "1 while the cache may answer", cache.usable()),
        ]

    install_common(
        app, service="blog", settings=settings, ready=ready, stats=stats, collect=collect
    )
    _add_api(app)
    _add_pages(app)
    return app


async def _cached(
    request: Request,
    key: Hashable,
    load: Callable[[], Awaitable[tuple[Any, dict[str, str]]]],
) -> Response:
    """Answer from the cache, or load, serialise and keep.

    Serialised as they are, not validated against the response model first: the
    rows come from our own schema and the repository builds each field the model
    declares, in its order (tests/test_cache.py holds both to the same bytes).
    Validation was a tenth of the CPU of an uncached list.
    """
    cache: ResponseCache = request.app.state.cache
    hit = cache.get(key)
    if hit is None:
        generation = cache.generation
        found, headers = await load()
        hit = Cached(to_json(found), headers)
        cache.put(key, generation, hit)
    return Response(hit.body, media_type="application/json", headers=hit.headers)


def _add_api(app: FastAPI) -> None:
    # The cached reads build their repository only on a miss: as a dependency it
    # cost every cache hit about a tenth of its time (py-spy).
    @app.get("/blog/api/posts", response_model=list[PostSummary], summary="List posts")
    async def list_posts(
        request: Request,
        offset: Annotated[int, Query(ge=0, le=INTEGER_MAX)] = 0,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        category: Annotated[str | None, Query(max_length=50, description="slug")] = None,
        author: Annotated[str | None, Query(max_length=100)] = None,
    ) -> Response:
        async def load() -> tuple[Any, dict[str, str]]:
            repo = _repository_of(request)
            items, total = await repo.list_posts(PostFilter(category, author), offset, limit)
            return items, {"X-Total-Count": str(total)}

        key = ("list", offset, limit, category, author)
        return await _cached(request, key, load)

    @app.get("/blog/api/posts/{post_id}", response_model=Post, summary="Read a post")
    async def get_post(request: Request, post_id: PostIdPath) -> Response:
        async def load() -> tuple[Any, dict[str, str]]:
            return await _repository_of(request).get_post(post_id), {}

        return await _cached(request, ("post", post_id), load)

    @app.post(
        "/blog/api/posts",
        response_model=Post,
        status_code=status.HTTP_201_CREATED,
        summary="Create a post",
    )
    async def create_post(body: NewPost, identity: ActiveIdentity, repo: Blog) -> dict[str, Any]:
        return await repo.create_post(
            identity.username, identity.user_id, body.title, body.content, _choice(body)
        )

    # Ownership is the account id in the token, never the name: a name can be
    # registered again after its account is deleted (docs/decisions.md 44).
    @app.patch("/blog/api/posts/{post_id}", response_model=Post, summary="Change a post")
    async def update_post(
        post_id: PostIdPath, body: PostChanges, identity: ActiveIdentity, repo: Blog
    ) -> dict[str, Any]:
        changes: dict[str, Any] = body.model_dump(include={"title", "content"}, exclude_none=True)
        return await repo.update_post(post_id, identity.user_id, changes, _choice(body))

    @app.delete(
        "/blog/api/posts/{post_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        summary="Delete a post",
    )
    async def delete_post(post_id: PostIdPath, identity: ActiveIdentity, repo: Blog) -> Response:
        await repo.delete_post(post_id, identity.user_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.get("/blog/api/categories", response_model=list[Category], summary="List categories")
    async def list_categories(request: Request) -> Response:
        async def load() -> tuple[Any, dict[str, str]]:
            return await _repository_of(request).list_categories(), {}

        return await _cached(request, ("categories",), load)


def _add_pages(app: FastAPI) -> None:
    # The UI lives in pages.py (routes, asset hashing, security headers).
    from titanium.services.blog.pages import add_pages

    add_pages(app)
