"""The Titanium / Services Grafana dashboard, drawn from real Prometheus data into a PNG.

Grafana cannot be installed here, so matplotlib draws the panels instead. The
script starts the four services (SQLite by default; `--backend postgresql` uses a
throwaway database on the shared server) and Debian's Prometheus scraping them
every second with the local configuration and the cluster's rules
(tests/support/prometheus.py). It seeds a few users and posts, then drives a
bounded load through the gateway (at most `--duration` seconds and
`--max-requests` requests) whose concurrency steps 2, 6, 12, 3 so that rates and
latencies have shape: post lists, single posts, categories, profiles, the UI,
404s and logins from a pool of workers, and paced registrations (past the
per-client limit, so some are throttled), wrong passwords (one user's enough to
be throttled), new, edited and deleted posts.

Then every panel of the dashboard that does not say "cluster-only" has its
queries evaluated with /api/v1/query_range over the load window (step 1 s;
`$namespace` is the local namespace, `$__rate_interval` 15 s) and is drawn in the
dashboard's gridPos layout: time series one line per series, legends from the
panel's legendFormat, the y axis in the panel's unit; stat panels as their last
values. The PNG goes to build/dashboard-services.png; everything started is
stopped and the temporary directory removed.

    make dashboard-png
    .venv/bin/python bench/dashboard_png.py --duration 30 --backend postgresql
"""

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # support/: Prometheus, ports, PostgreSQL server

from support.env import CLEAN, settings_for  # noqa: E402
from support.ports import stack_ports  # noqa: E402
from support.postgres import SharedServer  # noqa: E402
from support.prometheus import PROMETHEUS, SCRAPE_INTERVAL, Prometheus  # noqa: E402
from support.wait import wait_until  # noqa: E402
from titanium.db.migrations import upgrade_schema  # noqa: E402
from titanium.ops.monitoring import (  # noqa: E402
    DASHBOARDS,
    LOCAL_NAMESPACE,
    dashboard_panels,
    local_targets,
    substitute,
    write_rule_file,
)
from titanium.runner import Stack  # noqa: E402
from titanium.security.tokens import generate_key_pair  # noqa: E402
from titanium.services.registry import DATA_SERVICES  # noqa: E402

DASHBOARD = DASHBOARDS / "titanium-services.json"
OUTPUT = ROOT / "build" / "dashboard-services.png"
POSTGRES_URL = os.environ.get(
    "TITANIUM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

# Grafana's variables as the local stack has them; $datasource is the one Prometheus.
VARIABLES = {
    "namespace": LOCAL_NAMESPACE,
    "__rate_interval": "15s",
    "__interval": "15s",
    "datasource": "",
}
STEP = SCRAPE_INTERVAL  # seconds between the points of a range query
LEAD, TAIL = 5.0, 10.0  # quiet seconds drawn before and after the load

# The load: (share of the duration, concurrent workers), and the workers' mix.
PHASES = [(0.2, 2), (0.25, 6), (0.25, 12), (0.3, 3)]
PACE = 0.75  # seconds between the paced requests (registrations, wrong logins, writes)
SEED_USERS, SEED_POSTS = 8, 120
PASSWORD = "dashboard-pw"  # noqa: S105 - of throwaway accounts
ENV = {
    "LOG_LEVEL": "WARNING",
    # All the load comes from 127.0.0.1: the per-client login limit would lock the
    # correct logins out with the wrong ones. The registration limit stays low
    # enough that the paced registrations pass it.
    "LOGIN_MAX_FAILURES_PER_CLIENT": "60",
    "REGISTRATION_MAX_PER_CLIENT": "20",
    # A small cache, so that the posts read at random evict each other.
    "BLOG_CACHE_BYTES": str(128 * 1024),
}

# Grafana's dark theme and classic palette.
PAGE, PANEL, TEXT, GRID, DIM = "#111217", "#181b1f", "#ccccdc", "#2c3235", "#8e8e8e"
PALETTE = [
    "#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
    "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C", "#6D1F62", "#584477",
]  # fmt: skip
STAT_GREEN = "#73BF69"
COLUMN_IN, ROW_IN, HEADER_IN, GAP_IN = 0.8, 0.32, 0.7, 0.06  # Grafana's 24-column grid


# The load.


@dataclass
class Load:
    """What the load generator knows of the stack's data, and what it sent."""

    users: list[str]
    victim: str
    tokens: list[str]
    posts: list[int]
    deadline: float
    max_requests: int
    rng: random.Random
    own: dict[int, str] = field(default_factory=dict)  # post id -> its author's token
    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def more(self) -> bool:
        return time.monotonic() < self.deadline and self.sent < self.max_requests

    async def call(
        self, client: httpx.AsyncClient, name: str, method: str, url: str, **kwargs: Any
    ) -> httpx.Response | None:
        self.sent += 1
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.HTTPError:
            self.outcomes[f"{name} error"] += 1
            return None
        self.outcomes[f"{name} {response.status_code}"] += 1
        return response

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


async def seed(
    client: httpx.AsyncClient, rng: random.Random
) -> tuple[list[str], list[str], list[int]]:
    """SEED_USERS users with a token each and SEED_POSTS posts: names, tokens, post ids."""
    names = [f"dash_{i}_{uuid.uuid4().hex[:6]}" for i in range(SEED_USERS)]
    tokens, posts = [], []
    body: dict[str, Any]
    for name in names:
        body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
        (await client.post("/api/register", json=body)).raise_for_status()
        login = await client.post("/api/login", json={"username": name, "password": PASSWORD})
        login.raise_for_status()
        tokens.append(login.json()["token"])
    for i in range(SEED_POSTS):
        body = {
            "title": f"Post {i}",
            "content": "Titanium dashboard post. " * rng.randint(5, 60),
            "category_id": 1 + i % 3,
        }
        headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
        created = await client.post("/blog/api/posts", json=body, headers=headers)
        created.raise_for_status()
        posts.append(int(created.json()["id"]))
    return names, tokens, posts


async def read(load: Load, client: httpx.AsyncClient) -> None:
    """One request of the workers' mix: mostly reads, some logins, a few misses."""
    rng = load.rng
    kind = rng.choices(
        ["list", "post", "categories", "profile", "page", "missing", "login"],
        weights=[30, 34, 5, 5, 4, 4, 6],
    )[0]
    if kind == "list":
        params = {"offset": rng.randrange(0, 100, 20), "limit": rng.choice([10, 20])}
        await load.call(client, kind, "GET", "/blog/api/posts", params=params)
    elif kind == "post":
        await load.call(client, kind, "GET", f"/blog/api/posts/{rng.choice(load.posts)}")
    elif kind == "categories":
        await load.call(client, kind, "GET", "/blog/api/categories")
    elif kind == "profile":
        await load.call(client, kind, "GET", f"/api/users/{rng.choice(load.users)}")
    elif kind == "page":
        path = rng.choice(["/blog/", f"/blog/posts/{rng.choice(load.posts)}"])
        await load.call(client, kind, "GET", path)
    elif kind == "missing":
        path = rng.choice(["/blog/api/posts/999999999", "/no-such-page", "/api/users/nobody"])
        await load.call(client, kind, "GET", path)
    else:
        body = {"username": rng.choice(load.users), "password": PASSWORD}
        await load.call(client, kind, "POST", "/api/login", json=body)


async def paced(load: Load, client: httpx.AsyncClient, step: int) -> None:
    """One of the paced requests, in turn: registrations, wrong passwords, writes."""
    rng = load.rng
    body: dict[str, Any]
    kind = ["register", "create", "wrong victim", "register", "edit", "wrong", "delete"][step % 7]
    if kind == "register":
        name = f"dash_new_{uuid.uuid4().hex[:8]}"
        body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
        response = await load.call(client, kind, "POST", "/api/register", json=body)
        if response is not None and response.status_code == 201:
            load.users.append(name)
    elif kind == "create":
        token = rng.choice(load.tokens)
        body = {"title": "Fresh", "content": "Written under load. " * 20, "category_id": 2}
        response = await load.call(
            client, kind, "POST", "/blog/api/posts", json=body, headers=load.bearer(token)
        )
        if response is not None and response.status_code == 201:
            post_id = int(response.json()["id"])
            load.posts.append(post_id)
            load.own[post_id] = token
    elif kind in ("wrong victim", "wrong"):
        user = load.victim if kind == "wrong victim" else rng.choice(load.users)
        body = {"username": user, "password": "not the password"}
        await load.call(client, kind, "POST", "/api/login", json=body)
    elif load.own:
        post_id = rng.choice(sorted(load.own))
        headers = load.bearer(load.own[post_id])
        if kind == "edit":
            body = {"title": f"Edited {rng.randrange(1000)}"}
            await load.call(client, kind, "PATCH", f"/blog/api/posts/{post_id}", json=body,
                            headers=headers)  # fmt: skip
        else:
            await load.call(client, kind, "DELETE", f"/blog/api/posts/{post_id}", headers=headers)
            del load.own[post_id]  # its id stays in `posts`: reading it again is a 404


def workers_at(elapsed: float, duration: float) -> int:
    """How many workers the load runs `elapsed` seconds in."""
    at = 0.0
    for share, workers in PHASES:
        at += share * duration
        if elapsed < at:
            return workers
    return PHASES[-1][1]


async def drive(load: Load, gateway: str, duration: float) -> None:
    """Run the load until its deadline or its request budget."""
    started = time.monotonic()
    most = max(workers for _, workers in PHASES)
    limits = httpx.Limits(max_connections=most + 2, max_keepalive_connections=most + 2)
    async with httpx.AsyncClient(base_url=gateway, timeout=10, limits=limits) as client:

        async def worker(index: int) -> None:
            while load.more():
                if index >= workers_at(time.monotonic() - started, duration):
                    await asyncio.sleep(0.2)
                    continue
                await read(load, client)

        async def pacer() -> None:
            step = 0
            while load.more():
                await paced(load, client, step)
                step += 1
                await asyncio.sleep(PACE)

        await asyncio.gather(pacer(), *(worker(i) for i in range(most)))


# The dashboard.


@dataclass
class Box:
    """A panel's place on Grafana's grid: 24 columns, rows of 30 px."""

    x: int
    y: int
    w: int
    h: int

    def overlaps(self, other: "Box") -> bool:
        return (
            self.x < other.x + other.w
            and other.x < self.x + self.w
            and self.y < other.y + other.h
            and other.y < self.y + self.h
        )


@dataclass
class Series:
    label: str
    times: list[float]  # Unix time
    values: list[float]


@dataclass
class Drawn:
    panel: dict[str, Any]
    box: Box
    series: list[Series]


def layout(chosen: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Box]]:
    """The panels placed as Grafana places them: by gridPos, floated up, never overlapping.

    Without a gridPos on every panel: two columns in panel order.
    """
    if not all("gridPos" in panel for panel in chosen):
        return [(p, Box(12 * (i % 2), 8 * (i // 2), 12, 8)) for i, p in enumerate(chosen)]
    placed: list[tuple[dict[str, Any], Box]] = []
    for panel in sorted(chosen, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        grid = panel["gridPos"]
        box = Box(grid["x"], grid["y"], grid["w"], grid["h"])

        def hit(candidate: Box) -> Box | None:
            return next((b for _, b in placed if b.overlaps(candidate)), None)

        while box.y > 0 and hit(Box(box.x, box.y - 1, box.w, box.h)) is None:
            box.y -= 1
        while (other := hit(box)) is not None:
            box.y = other.y + other.h
        placed.append((panel, box))
    return placed


def legend(template: str, labels: dict[str, str]) -> str:
    """A series' name from a legendFormat (`{{job}} {{status}}`), or its labels."""
    if template and template != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    name = labels.get("__name__", "")
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items())) + "}"


def query_range(
    prometheus: Prometheus, expr: str, start: float, end: float
) -> list[dict[str, Any]]:
    response = prometheus.client.get(
        "/api/v1/query_range",
        params={"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{STEP}"},
    )
    body = response.json()
    if body.get("status") != "success":
        raise SystemExit(f"dashboard_png: {expr!r}: {body.get('errorType')}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def clock(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def finite(value: float) -> float:
    """`value`, or NaN (a gap) for the infinities a quantile of too few samples gives."""
    return value if math.isfinite(value) else math.nan


def fetch(prometheus: Prometheus, panel: dict[str, Any], start: float, end: float) -> list[Series]:
    """The panel's series over [start, end], each on the full step grid (gaps are NaN)."""
    steps = round((end - start) / STEP) + 1
    grid = [start + i * STEP for i in range(steps)]
    found = []
    for target in panel.get("targets", []):
        if not target.get("expr") or target.get("hide"):
            continue
        for result in query_range(prometheus, substitute(target["expr"], VARIABLES), start, end):
            by_step = {
                round((float(t) - start) / STEP): finite(float(v))
                for t, v in result.get("values", [])
            }
            values = [by_step.get(i, math.nan) for i in range(steps)]
            label = legend(target.get("legendFormat", ""), result["metric"])
            found.append(Series(label.strip(), grid, values))
    return sorted(found, key=lambda s: s.label)


def formatter(unit: str) -> Callable[[float], str]:
    """A value as Grafana shows it in `unit` (the few units the dashboards use)."""

    def scaled(value: float, steps: list[tuple[float, str]], digits: int = 3) -> str:
        for size, suffix in steps:
            if abs(value) >= size:
                return f"{value / size:.{digits}g}{suffix}"
        return f"{value:.{digits}g}"

    def seconds(value: float) -> str:
        if value == 0:
            return "0"
        if abs(value) < 1e-3:
            return f"{value * 1e6:.3g} µs"
        if abs(value) < 1:
            return f"{value * 1e3:.3g} ms"
        return f"{value:.3g} s"

    def short(value: float) -> str:
        return scaled(value, [(1e9, " Bil"), (1e6, " Mil"), (1e3, " K")])

    table: dict[str, Callable[[float], str]] = {
        "percentunit": lambda v: f"{v * 100:.3g}%",
        "percent": lambda v: f"{v:.3g}%",
        "s": seconds,
        "bytes": lambda v: scaled(v, [(2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB")]),
        "reqps": lambda v: f"{short(v)} req/s",
        "short": short,
    }
    return table.get(unit, short)


def panel_frame(figure: Figure, box: Box, height_in: float, title: str) -> tuple[float, float]:
    """Draw a panel's background and title; returns its top-left corner in inches."""
    width_in = figure.get_figwidth()
    left = box.x * COLUMN_IN + GAP_IN
    top = HEADER_IN + box.y * ROW_IN + GAP_IN
    w, h = box.w * COLUMN_IN - 2 * GAP_IN, box.h * ROW_IN - 2 * GAP_IN
    figure.add_artist(
        Rectangle(
            (left / width_in, 1 - (top + h) / height_in),
            w / width_in,
            h / height_in,
            transform=figure.transFigure,
            facecolor=PANEL,
            edgecolor=GRID,
            linewidth=0.8,
            zorder=-1,  # under the panel's axes
        )
    )
    figure.text(
        (left + 0.12) / width_in,
        1 - (top + 0.12) / height_in,
        title,
        color=TEXT,
        fontsize=10,
        fontweight="bold",
        va="top",
    )
    return left, top


def axes_at(figure: Figure, height_in: float, left: float, top: float, w: float, h: float) -> Axes:
    width_in = figure.get_figwidth()
    axes: Axes = figure.add_axes(
        (left / width_in, 1 - (top + h) / height_in, w / width_in, h / height_in)
    )
    return axes


def draw_timeseries(
    figure: Figure, drawn: Drawn, height_in: float, window: tuple[float, float]
) -> None:
    panel, box = drawn.panel, drawn.box
    left, top = panel_frame(figure, box, height_in, panel.get("title", ""))
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    show = formatter(unit)
    panel_w, panel_h = box.w * COLUMN_IN - 2 * GAP_IN, box.h * ROW_IN - 2 * GAP_IN
    plot_h = panel_h - 0.45 - 0.35
    rows = max(1, int(plot_h / 0.15))
    columns = max(1, math.ceil(len(drawn.series) / rows))
    longest = max((len(series.label) for series in drawn.series), default=0)
    legend_w = 0.15 + (0.45 + 0.055 * longest) * columns if drawn.series else 0.0
    axes = axes_at(figure, height_in, left + 0.85, top + 0.45, panel_w - 1.0 - legend_w, plot_h)
    axes.set_facecolor(PANEL)
    for index, series in enumerate(drawn.series):
        axes.plot(
            series.times,
            series.values,
            color=PALETTE[index % len(PALETTE)],
            linewidth=1.3,
            label=series.label,
        )
    axes.axvspan(*window, color="#5794F2", alpha=0.06, linewidth=0)
    if drawn.series:
        axes.set_xlim(drawn.series[0].times[0], drawn.series[0].times[-1])
    if all(not v < 0 for s in drawn.series for v in s.values):
        axes.set_ylim(bottom=0)
    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: show(v)))
    axes.yaxis.set_major_locator(MaxNLocator(nbins=4))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{clock(t):%H:%M:%S}"))
    if drawn.series:
        span = drawn.series[0].times[-1] - drawn.series[0].times[0]
        tick = next((t for t in (5, 10, 15, 30, 60, 120, 300) if span / t <= 8), 600)
        axes.xaxis.set_major_locator(MultipleLocator(tick))
    axes.tick_params(colors=DIM, labelsize=7, length=0)
    axes.grid(color=GRID, linewidth=0.6)
    for spine in axes.spines.values():
        spine.set_visible(False)
    if not drawn.series:
        axes.text(0.5, 0.5, "No data", color=DIM, ha="center", va="center",
                  transform=axes.transAxes)  # fmt: skip
        return
    axes.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.02),
        ncols=columns,
        fontsize=7,
        frameon=False,
        labelcolor=TEXT,
        handlelength=1.2,
        columnspacing=1.0,
        borderaxespad=0.2,
    )


def draw_stat(figure: Figure, drawn: Drawn, height_in: float) -> None:
    """A stat panel: each series' last value, as Grafana's default (last, not null)."""
    panel, box = drawn.panel, drawn.box
    left, top = panel_frame(figure, box, height_in, panel.get("title", ""))
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    show = formatter(unit)
    panel_w, panel_h = box.w * COLUMN_IN - 2 * GAP_IN, box.h * ROW_IN - 2 * GAP_IN
    axes = axes_at(figure, height_in, left + 0.1, top + 0.4, panel_w - 0.2, panel_h - 0.5)
    axes.set_axis_off()
    if not drawn.series:
        axes.text(0.5, 0.5, "No data", color=DIM, ha="center", va="center")
        return
    count = len(drawn.series)
    width, height = panel_w - 0.2, panel_h - 0.5

    def fit(rows: int) -> float:
        columns = math.ceil(count / rows)
        return min(width / columns / 1.6, height / rows / 0.7)

    rows = max(range(1, count + 1), key=fit)
    columns = math.ceil(count / rows)
    tile_w, tile_h = width / columns, height / rows
    for index, series in enumerate(drawn.series):
        row, column = divmod(index, columns)
        x = (column + 0.5) / columns
        y = 1 - (row + 0.5) / rows
        last = next((v for v in reversed(series.values) if not math.isnan(v)), math.nan)
        text = "N/A" if math.isnan(last) else show(last)
        size = min(26.0, tile_h * 72 * 0.5, tile_w * 72 / (0.65 * len(text) + 1))
        axes.text(x, y + 0.12 / rows, text, color=STAT_GREEN, fontsize=size,
                  fontweight="bold", ha="center", va="center")  # fmt: skip
        label_size = min(7.0, tile_w * 72 / (0.6 * max(1, len(series.label))))
        axes.text(x, y - 0.3 / rows, series.label, color=TEXT, fontsize=label_size,
                  ha="center", va="center")  # fmt: skip


def render(
    dashboard: dict[str, Any],
    drawn: list[Drawn],
    window: tuple[float, float],
    subtitle: str,
    output: Path,
) -> None:
    rows = max(d.box.y + d.box.h for d in drawn)
    width_in, height_in = 24 * COLUMN_IN, HEADER_IN + rows * ROW_IN + 0.1
    figure = Figure(figsize=(width_in, height_in), facecolor=PAGE)
    figure.text(GAP_IN / width_in, 1 - 0.12 / height_in, dashboard.get("title", ""),
                color=TEXT, fontsize=15, fontweight="bold", va="top")  # fmt: skip
    figure.text(GAP_IN / width_in, 1 - 0.45 / height_in, subtitle, color=DIM, fontsize=8,
                va="top")  # fmt: skip
    for item in drawn:
        if item.panel.get("type") == "stat":
            draw_stat(figure, item, height_in)
        else:
            draw_timeseries(figure, item, height_in, window)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100, facecolor=PAGE)


# The run.


def run(args: argparse.Namespace, workdir: Path) -> None:
    dashboard = json.loads(Path(args.dashboard).read_text())
    every = list(dashboard_panels(dashboard))
    chosen = [p for p in every if "cluster-only" not in p.get("description", "").lower()]
    if not chosen:
        raise SystemExit(f"dashboard_png: {args.dashboard} has no panel to draw here")
    rng = random.Random(args.seed)
    private, public = generate_key_pair(workdir / "keys")
    env = {**ENV, "JWT_PRIVATE_KEY_FILE": str(private), "JWT_PUBLIC_KEY_FILE": str(public)}
    server: SharedServer | None = None
    database: str | None = None
    if args.backend == "postgresql":
        server = SharedServer(POSTGRES_URL)
        database = server.create_database("titanium_dashboard")
        env |= server.env(database)
    else:
        env["DATA_DIR"] = str(workdir / "sqlite")
    stack: Stack | None = None
    prometheus: Prometheus | None = None
    try:
        settings = settings_for(env)
        for service in DATA_SERVICES:
            asyncio.run(upgrade_schema(settings, service))
        stack = Stack(env={**CLEAN, **env}, ports=stack_ports(), log_dir=workdir / "logs")
        stack.start()
        rule_file = write_rule_file(workdir / "rules.yml")
        targets = local_targets(stack.ports)
        prometheus = ready = Prometheus(workdir / "prometheus", targets, rule_file)
        prometheus.start()

        def scraped() -> bool:
            up = ready.targets_up()
            return len(up) == len(targets) and set(up.values()) == {"up"}

        wait_until(scraped, 30, "every target scraped")
        gateway = stack.url("gateway")

        async def prepare() -> tuple[list[str], list[str], list[int]]:
            async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
                return await seed(client, rng)

        names, tokens, posts = asyncio.run(prepare())
        time.sleep(LEAD)
        load = Load(
            users=names[1:],
            victim=names[0],
            tokens=tokens,
            posts=posts,
            deadline=time.monotonic() + args.duration,
            max_requests=args.max_requests,
            rng=rng,
        )
        print(
            f"load: {args.duration:g} s at most, {args.max_requests} requests at most", flush=True
        )
        began = time.time()
        asyncio.run(drive(load, gateway, args.duration))
        ended = time.time()
        time.sleep(TAIL + 2 * SCRAPE_INTERVAL)  # the tail, and the rules' last evaluation
        start, end = began - LEAD, ended + TAIL
        drawn = [
            Drawn(panel, box, fetch(prometheus, panel, start, end)) for panel, box in layout(chosen)
        ]
    except BaseException:
        for log in sorted(workdir.glob("**/*.log")):
            tail = log.read_text(errors="replace").splitlines()[-10:]
            print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        if prometheus is not None:
            prometheus.stop()
        if stack is not None:
            stack.stop()
        if server is not None and database is not None:
            server.drop_database(database)
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(load.outcomes.items()))
    print(f"sent {load.sent} requests in {ended - began:.0f} s ({outcomes})")
    window = (began, ended)
    subtitle = (
        f"Prometheus (scrape every {SCRAPE_INTERVAL:g} s), namespace {LOCAL_NAMESPACE}, "
        f"{args.backend}; {load.sent} requests through the gateway from "
        f"{clock(began):%H:%M:%S} to {clock(ended):%H:%M:%S} UTC (shaded), workers "
        f"{' / '.join(str(workers) for _, workers in PHASES)}; "
        f"{len(every) - len(chosen)} cluster-only panels left out"
    )
    output = Path(args.output)
    render(dashboard, drawn, window, subtitle, output)
    empty = [d.panel.get("title", "?") for d in drawn if not d.series]
    series = sum(len(d.series) for d in drawn)
    print(f"{output}: {len(drawn)} panels, {series} series")
    if empty:
        print(f"panels without data: {', '.join(empty)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60, help="seconds of load at most")
    parser.add_argument("--max-requests", type=int, default=20_000, help="requests at most")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--dashboard", default=str(DASHBOARD))
    parser.add_argument("--output", default=str(OUTPUT))
    parser.add_argument("--seed", type=int, default=7, help="random seed of the load's mix")
    args = parser.parse_args()
    if shutil.which(PROMETHEUS) is None:
        sys.exit("dashboard_png: Debian's prometheus is missing (apt-get install prometheus)")
    with tempfile.TemporaryDirectory(prefix="titanium-dashboard-") as workdir:
        run(args, Path(workdir))


if __name__ == "__main__":
    main()
