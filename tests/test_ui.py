"""The blog web UI in a real browser: Playwright driving Debian's Chromium.

The four services run as real processes on one SQLite stack of this module's
own. One backend is enough: the UI talks only HTTP, and test_api runs that
contract on both backends. The stack is started before the browser because
Playwright's sync API keeps an event loop running, and the stack's migrations
use asyncio.run.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from support.api import new_post, register
from support.stack import start_stack
from titanium.runner import Stack, wait_until_ready

try:
    from playwright.sync_api import expect, sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # the `browser` fixture fails with how to install it
    HAVE_PLAYWRIGHT = False

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = [pytest.mark.ui, pytest.mark.stack]  # Chromium, on the services as processes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Not docs/screenshots: a test run leaves the work tree clean; `make screenshots` copies them there.
SCREENSHOTS = Path(__file__).parent.parent / "build" / "screenshots"
PAGE_SIZE = 10
SEEDED = 23
SEED_CONTENT = """## Part {number}

Seed post **{number}** with `code`, _emphasis_ and a [link](https://example.com/{number}).

- one
- two

```python
print("post {number}")
```

> Quoted, with a line
> that goes on."""
TIMEOUT_MS = 10_000


@dataclass
class UiStack:
    """The services, an API client on the gateway, and the posts seeded for reading."""

    stack: Stack
    base: str
    client: httpx.Client
    seeder: dict[str, Any]
    seeded: list[dict[str, Any]]  # newest first, as the list shows them


@pytest.fixture(scope="module")
def ui(
    database_env: Callable[[str], dict[str, str]],
    keys: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[UiStack]:
    env = {**database_env("sqlite"), **keys}
    stack = start_stack(env, tmp_path_factory.mktemp("logs-ui"))
    client = httpx.Client(base_url=stack.url("gateway"), timeout=30)
    try:
        seeder = register(client, f"seeder_{uuid.uuid4().hex[:8]}")
        seeded: list[dict[str, Any]] = []
        for number in range(1, SEEDED + 1):
            post = new_post(
                client,
                seeder["headers"],
                title=f"Seed post {number:02d}",
                content=SEED_CONTENT.format(number=number),
                # Ids 1-3: the categories every fresh install has.
                category_id=number % 3 + 1,
            )
            seeded.append(post)
        yield UiStack(stack, stack.url("gateway"), client, seeder, seeded[::-1])
    finally:
        client.close()
        stack.stop()


@pytest.fixture(scope="module")
def browser(ui: UiStack) -> Iterator[Browser]:
    if not HAVE_PLAYWRIGHT:
        pytest.fail(
            "Playwright is not installed: .venv/bin/pip install playwright==1.65.2 "
            "(it is in the project's test extra: make install-test). "
            "Do not run `playwright install`; the tests use Debian's Chromium.",
            pytrace=False,
        )
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: apt-get install -y chromium", pytrace=False
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


def _context(browser: Browser, ui: UiStack, **options: Any) -> BrowserContext:
    settings: dict[str, Any] = {
        "base_url": ui.base,
        "viewport": {"width": 1200, "height": 860},
        "locale": "en-US",
        "timezone_id": "UTC",
        **options,
    }
    context = browser.new_context(**settings)
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    return context


@dataclass
class Watched:
    """A page with what went wrong in it: uncaught errors and CSP violations."""

    page: Page
    problems: list[str]


def _watch(page: Page) -> Watched:
    watched = Watched(page, [])
    page.on("pageerror", lambda error: watched.problems.append(f"uncaught: {error}"))
    page.on(
        "console",
        lambda message: (
            watched.problems.append(f"console: {message.text}")
            if "Content Security Policy" in message.text
            else None
        ),
    )
    return watched


@pytest.fixture
def page(browser: Browser, ui: UiStack) -> Iterator[Page]:
    context = _context(browser, ui)
    watched = _watch(context.new_page())
    yield watched.page
    context.close()
    assert watched.problems == [], "the page reported errors"


class Outage:
    """Stops blog-service for real, and brings it back."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.down = False

    def stop(self) -> None:
        self.stack.stop_one("blog")
        self.down = True

    def restore(self) -> None:
        if self.down:
            self.stack.start_one("blog")
            url = f"{self.stack.url('blog')}/ready"
            wait_until_ready(url, self.stack.processes["blog"], timeout=30)
            self.down = False


@pytest.fixture
def blog_outage(ui: UiStack) -> Iterator[Outage]:
    outage = Outage(ui.stack)
    yield outage
    outage.restore()


def open_list(page: Page, path: str = "/blog/") -> None:
    page.goto(path)
    loaded(page, '[data-page="list"]')


def loaded(page: Page, selector: str) -> None:
    """Wait for a rendered page and for the spinner to go."""
    expect(page.locator(selector)).to_be_visible()
    expect(page.locator("#spinner")).to_be_hidden()


def card_titles(page: Page) -> list[str]:
    return page.locator("article.card h2").all_inner_texts()


def log_in(page: Page, user: dict[str, Any]) -> None:
    page.goto("/blog/login")
    page.fill("#field-username", user["username"])
    page.fill("#field-password", user["password"])
    page.click("form button[type=submit]")
    expect(page.locator("#account .me")).to_have_text(user["username"])


def rgb(hex_colour: str) -> str:
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


def test_visitor_pages_filters_and_opens_a_post(browser: Browser, ui: UiStack) -> None:
    context = _context(browser, ui)
    watched = _watch(context.new_page())
    page = watched.page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    open_list(page)
    assert card_titles(page) == [post["title"] for post in ui.seeded[:PAGE_SIZE]]
    newest = ui.seeded[0]
    first = page.locator("article.card").first
    expect(first.locator(".author")).to_have_text(ui.seeder["username"])
    expect(first.locator("time")).to_have_attribute("datetime", newest["created_at"])
    # The excerpt without the Markdown that would be noise: "##", "**", "`", link syntax.
    excerpt = re.compile(r"^Part 23\s+Seed post 23 with code, _emphasis_ and a link\.\s")
    expect(first.locator(".excerpt")).to_have_text(excerpt)
    categories = {c["id"]: c for c in ui.client.get("/blog/api/categories").json()}
    badge = first.locator(".badge")
    expect(badge).to_have_text(newest["category"]["name"])
    colour = categories[newest["category"]["id"]]["color"]
    assert badge.evaluate("el => getComputedStyle(el).backgroundColor") == rgb(colour)
    # The inlined stylesheet applied (its CSP hash matched).
    header = page.locator("header.top")
    assert header.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(17, 24, 39)"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "list.png"))

    # Paging: older, older (the last page has no "Older"), newer, and history.
    page.click("a.older")
    expect(page).to_have_url(re.compile(r"/blog/\?page=2$"))
    expect(page.locator("article.card h2").first).to_have_text(ui.seeded[PAGE_SIZE]["title"])
    assert card_titles(page) == [p["title"] for p in ui.seeded[PAGE_SIZE : 2 * PAGE_SIZE]]
    page.click("a.older")
    expect(page.locator("article.card")).to_have_count(SEEDED - 2 * PAGE_SIZE)
    assert card_titles(page) == [p["title"] for p in ui.seeded[2 * PAGE_SIZE :]]
    expect(page.locator("a.older")).to_have_count(0)
    expect(page.locator(".page-of")).to_contain_text("Page 3 of 3")
    page.click("a.newer")
    expect(page).to_have_url(re.compile(r"page=2$"))
    page.go_back()
    expect(page.locator("article.card")).to_have_count(SEEDED - 2 * PAGE_SIZE)

    # Filter by category, from the list with post counts.
    link = page.locator('.categories a[data-slug="troubleshooting"]')
    expect(link.locator(".count")).to_have_text(str(categories[2]["post_count"]))
    link.click()
    expect(page).to_have_url(re.compile(r"category=troubleshooting"))
    expect(page.locator(".posts h1")).to_have_text("Posts in Troubleshooting")
    wanted = [p["title"] for p in ui.seeded if p["category"]["id"] == 2]
    expect(page.locator("article.card")).to_have_count(len(wanted))
    assert card_titles(page) == wanted
    assert set(page.locator("article.card .badge").all_inner_texts()) == {"Troubleshooting"}

    # Filter by author: the author link, then the filter form.
    page.locator("article.card .author").first.click()
    expect(page).to_have_url(re.compile(rf"author={ui.seeder['username']}"))
    expect(page.locator(".posts h1")).to_contain_text(f"by {ui.seeder['username']}")
    open_list(page)
    page.fill("#author-filter", "nobody-wrote-this")
    page.click(".author-filter button")
    expect(page.locator(".empty")).to_have_text("No posts match this filter yet.")

    # Open a post; its URL survives a reload.
    open_list(page)
    target = ui.seeded[1]
    page.click(f'article.card h2 a[href="/blog/posts/{target["id"]}"]')
    expect(page).to_have_url(f"{ui.base}/blog/posts/{target['id']}")
    for _ in range(2):
        loaded(page, '[data-page="post"]')
        expect(page.locator("article.post h1")).to_have_text(target["title"])
        expect(page.locator(".prose h2")).to_have_text("Part 22")
        expect(page.locator(".prose strong")).to_have_text("22")
        expect(page.locator(".prose em")).to_have_text("emphasis")
        expect(page.locator(".prose li")).to_have_count(2)
        expect(page.locator(".prose a")).to_have_attribute("href", "https://example.com/22")
        expect(page.locator(".prose pre code")).to_have_text('print("post 22")')
        expect(page.locator(".prose blockquote")).to_contain_text("that goes on.")
        expect(page.locator(".prose blockquote br")).to_have_count(1)
        expect(page.locator(".actions")).to_have_count(0)
        page.reload()
    expect(page).to_have_title(f"{target['title']} · Titanium blog")
    page.screenshot(path=str(SCREENSHOTS / "post.png"))

    # Every request of the visit went to the blog's own origin: no CDN.
    assert requested
    assert [url for url in requested if not url.startswith(ui.base + "/")] == []
    context.close()
    assert watched.problems == []


def test_phone_sized_screen(browser: Browser, ui: UiStack) -> None:
    context = _context(
        browser,
        ui,
        viewport={"width": 375, "height": 667},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    watched = _watch(context.new_page())
    page = watched.page
    overflow = "document.documentElement.scrollWidth - window.innerWidth"

    open_list(page)
    assert page.evaluate(overflow) <= 0
    # Filters come first on a phone, above the posts, and every card spans the screen.
    sidebar = page.locator(".sidebar").bounding_box()
    posts = page.locator(".posts").bounding_box()
    card = page.locator("article.card").first.bounding_box()
    assert sidebar and posts and card
    assert sidebar["y"] < posts["y"]
    assert card["width"] >= 375 - 2 * 16
    for button in ("Log in", "Sign up"):
        box = page.locator(f"#account >> text={button}").bounding_box()
        assert box and box["x"] + box["width"] <= 375
    page.screenshot(path=str(SCREENSHOTS / "list-phone.png"))

    page.locator('.categories a[data-slug="test"]').tap()
    expect(page).to_have_url(re.compile(r"category=test"))
    page.locator("article.card h2 a").first.tap()
    loaded(page, '[data-page="post"]')
    assert page.evaluate(overflow) <= 0
    page.goto("/blog/signup")
    loaded(page, "form")
    assert page.evaluate(overflow) <= 0
    context.close()
    assert watched.problems == []


def test_writer_signs_up_logs_in_creates_edits_and_deletes(page: Page, ui: UiStack) -> None:
    username = f"writer_{uuid.uuid4().hex[:8]}"
    password = "correct horse battery"
    open_list(page)
    page.click("#account >> text=Sign up")
    page.fill("#field-username", username)
    page.fill("#field-email", f"{username}@example.com")
    page.fill("#field-password", password)
    page.click("form button[type=submit]")
    expect(page.locator("#account .me")).to_have_text(username)
    expect(page.locator("#flash")).to_contain_text("Welcome")

    page.click("#account >> text=Log out")
    expect(page.locator("#account >> text=Log in")).to_be_visible()
    assert page.evaluate("localStorage.getItem('titanium.token')") is None
    log_in(page, {"username": username, "password": password})
    token = page.evaluate("localStorage.getItem('titanium.token')")
    assert (
        ui.client.get("/api/users/me", headers={"Authorization": f"Bearer {token}"}).json()[
            "username"
        ]
        == username
    )

    title = f"Fresh from the browser {uuid.uuid4().hex[:6]}"
    page.click("#account >> text=Write")
    loaded(page, '[data-page="editor"]')
    page.fill("#field-title", title)
    page.fill("#field-category_name", "Test")
    page.fill("#field-content", "Written in **Chromium**.\n\n> quoted")
    page.click("form button[type=submit]")
    loaded(page, '[data-page="post"]')
    expect(page.locator("article.post h1")).to_have_text(title)
    expect(page.locator(".prose strong")).to_have_text("Chromium")
    expect(page.locator(".prose blockquote")).to_have_text("quoted")
    post_id = int(page.url.rsplit("/", 1)[1])
    stored = ui.client.get(f"/blog/api/posts/{post_id}").json()
    assert (stored["author"], stored["category"]["slug"]) == (username, "test")

    page.click("text=← All posts")
    loaded(page, '[data-page="list"]')
    expect(page.locator("article.card h2").first).to_have_text(title)
    expect(page.locator("article.card").first.locator(".badge")).to_have_text("Test")

    page.locator("article.card h2 a").first.click()
    loaded(page, '[data-page="post"]')
    page.click(".actions >> text=Edit")
    loaded(page, '[data-page="editor"]')
    expect(page.locator("#field-title")).to_have_value(title)
    page.fill("#field-title", f"{title} (edited)")
    page.click("form button[type=submit]")
    expect(page.locator("article.post h1")).to_have_text(f"{title} (edited)")
    assert ui.client.get(f"/blog/api/posts/{post_id}").json()["title"] == f"{title} (edited)"

    page.once("dialog", lambda dialog: dialog.accept())
    page.click(".actions >> text=Delete")
    loaded(page, '[data-page="list"]')
    expect(page.locator("#flash")).to_have_text("Post deleted.")
    assert f"{title} (edited)" not in card_titles(page)
    assert ui.client.get(f"/blog/api/posts/{post_id}").status_code == 404


def test_only_the_author_sees_edit_and_delete(page: Page, ui: UiStack) -> None:
    owner = register(ui.client)
    other = register(ui.client)
    post = new_post(
        ui.client, owner["headers"], title="Owned by someone", content="Some *text*.", category_id=3
    )

    log_in(page, owner)
    page.goto(f"/blog/posts/{post['id']}")
    loaded(page, '[data-page="post"]')
    expect(page.locator(".actions button")).to_have_text("Delete")
    expect(page.locator(".actions a")).to_have_text("Edit")

    page.click("#account >> text=Log out")
    expect(page.locator(".actions")).to_have_count(0)
    log_in(page, other)
    page.goto(f"/blog/posts/{post['id']}")
    loaded(page, '[data-page="post"]')
    expect(page.locator("article.post h1")).to_have_text("Owned by someone")
    expect(page.locator(".actions")).to_have_count(0)
    expect(page.get_by_role("button", name="Delete")).to_have_count(0)
    # The edit URL, typed in, refuses as well.
    page.goto(f"/blog/posts/{post['id']}/edit")
    expect(page.locator('[data-kind="forbidden"]')).to_contain_text("Only its author")


XSS_TITLE = "<img src=x onerror=\"window.__xss='title'\">"
XSS_CONTENT = "\n\n".join(
    [
        "<script>window.__xss = 'script'</script>",
        "<img src=x onerror=\"window.__xss='img'\">",
        "[click me](javascript:window.__xss='link')",
        "![picture](javascript:window.__xss='image')",
        "<a href=\"javascript:window.__xss='a'\" onclick=\"window.__xss='onclick'\">raw</a>",
        "<svg onload=\"window.__xss='svg'\"></svg>",
        "**still rendered**",
    ]
)
ACTIVE = (
    ".prose script, .prose img, .prose svg, .prose iframe, "
    ".prose [onerror], .prose [onload], .prose [onclick], a[href^='javascript:']"
)


def test_script_in_a_post_runs_nothing(page: Page, ui: UiStack) -> None:
    author = register(ui.client)
    post = new_post(
        ui.client, author["headers"], title=XSS_TITLE, content=XSS_CONTENT, category_id=3
    )

    open_list(page)
    expect(page.locator("article.card h2").first).to_have_text(XSS_TITLE)
    page.goto(f"/blog/posts/{post['id']}")
    loaded(page, '[data-page="post"]')
    expect(page.locator("article.post h1")).to_have_text(XSS_TITLE)
    prose = page.locator(".prose")
    expect(prose).to_contain_text("<script>window.__xss = 'script'</script>")
    expect(prose).to_contain_text("<img src=x onerror=")
    expect(prose.locator("strong")).to_have_text("still rendered")
    assert page.locator(ACTIVE).count() == 0
    page.get_by_text("click me").click()
    # An image error handler would fire asynchronously; give it the chance.
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None

    # The editor's preview uses the same renderer.
    log_in(page, author)
    page.goto(f"/blog/posts/{post['id']}/edit")
    loaded(page, '[data-page="editor"]')
    page.click("text=Preview")
    expect(page.locator(".preview .prose strong")).to_have_text("still rendered")
    page.wait_for_timeout(300)
    assert page.locator(ACTIVE).count() == 0
    assert page.evaluate("window.__xss") is None


def test_form_shows_the_api_validation_messages(page: Page, ui: UiStack) -> None:
    writer = register(ui.client)
    long_title = "x" * 201
    api_errors = ui.client.post(
        "/blog/api/posts",
        json={"title": long_title, "content": "body"},
        headers=writer["headers"],
    ).json()["errors"]
    expected = next(error["message"] for error in api_errors if error["field"] == "title")

    log_in(page, writer)
    page.goto("/blog/write")
    loaded(page, '[data-page="editor"]')
    page.fill("#field-title", long_title)
    page.fill("#field-content", "body")
    page.click("form button[type=submit]")
    expect(page.locator("#error-title")).to_have_text(expected)
    expect(page.locator("#field-title")).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".counter")).to_have_text("201 / 200")
    expect(page.locator("#error-content")).to_be_hidden()
    page.screenshot(path=str(SCREENSHOTS / "editor-errors.png"))

    page.fill("#field-title", "A fine title")
    page.fill("#field-content", "   ")
    page.click("form button[type=submit]")
    expect(page.locator("#error-content")).to_have_text("must not be empty")
    expect(page.locator("#error-title")).to_be_hidden()
    assert page.url.endswith("/blog/write")
    mine = ui.client.get("/blog/api/posts", params={"author": writer["username"]})
    assert mine.headers["X-Total-Count"] == "0"


def test_a_stopped_blog_service_gets_a_clear_message(
    page: Page, ui: UiStack, blog_outage: Outage
) -> None:
    writer = register(ui.client)
    log_in(page, writer)
    page.goto("/blog/write")
    loaded(page, '[data-page="editor"]')

    blog_outage.stop()
    page.fill("#field-title", "Written during an outage")
    page.fill("#field-content", "Will it be saved?")
    page.click("form button[type=submit]")
    expect(page.locator(".form-error")).to_contain_text("The blog is unavailable right now")
    expect(page.locator("#field-title")).to_have_value("Written during an outage")

    page.click("header .brand")
    down = page.locator('[data-kind="down"]')
    expect(down).to_contain_text("The blog is unavailable right now")
    expect(down).to_contain_text("blog-service is unavailable (HTTP 503)")
    expect(page.locator("#spinner")).to_be_hidden()

    blog_outage.restore()
    down.get_by_role("button", name="Try again").click()
    loaded(page, '[data-page="list"]')
    expect(page.locator("article.card")).to_have_count(PAGE_SIZE)


def test_pages_and_assets_are_served_by_blog_service(ui: UiStack) -> None:
    shell = ui.client.get("/blog/")
    assert shell.headers["content-type"] == "text/html; charset=utf-8"
    assert shell.headers["cache-control"] == "no-cache"
    policy = shell.headers["content-security-policy"]
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy
    # Every page URL serves the same shell, so any of them can be shared and reloaded.
    for path in ["/blog/posts/1", "/blog/posts/1/edit", "/blog/write", "/blog/login"]:
        assert ui.client.get(path).text == shell.text
    unchanged = ui.client.get("/blog/", headers={"If-None-Match": shell.headers["etag"]})
    assert unchanged.status_code == 304
    redirect = ui.client.get("/blog?category=test")
    assert (redirect.status_code, redirect.headers["location"]) == (307, "/blog/?category=test")

    assets = re.findall(r'(?:src|href)="(/blog/static/[^"]+)"', shell.text)
    assert {url.split("?")[0] for url in assets} == {
        "/blog/static/app.js",
        "/blog/static/favicon.svg",
    }
    types = {"app.js": "text/javascript; charset=utf-8", "favicon.svg": "image/svg+xml"}
    for url in assets:
        response = ui.client.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"] == types[url.split("/")[-1].split("?")[0]]
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        revalidated = ui.client.get(url, headers={"If-None-Match": response.headers["etag"]})
        assert revalidated.status_code == 304
    # Without the current hash the answer must not be cached for good.
    assert ui.client.get("/blog/static/app.js").headers["cache-control"] == "no-cache"
    assert ui.client.get("/blog/static/app.css").headers["content-type"].startswith("text/css")
    assert ui.client.get("/blog/static/index.html").status_code == 404
    assert ui.client.get("/blog/static/nope.js").status_code == 404
