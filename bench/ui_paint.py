"""First contentful paint of the blog list page, in Debian's Chromium (a measurement, not a test).

Starts the services on SQLite, writes 30 posts through the API, then loads
http://.../blog/ once cold and 7 times warm, printing the paint times. The
target is the issue's "first paint of the list page under 100 ms locally".

    .venv/bin/python bench/ui_paint.py
"""

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from titanium.config import ServiceName  # noqa: E402
from titanium.runner import Stack  # noqa: E402
from titanium.security.tokens import generate_key_pair  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PORTS: dict[ServiceName, int] = {"gateway": 18200, "users": 18201, "auth": 18202, "blog": 18205}
FCP_ENTRIES = "performance.getEntriesByName('first-contentful-paint')"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="titanium-paint-") as workdir:
        private, public = generate_key_pair(Path(workdir) / "keys")
        env = {
            **os.environ,
            "DATA_DIR": str(Path(workdir) / "data"),
            "JWT_PRIVATE_KEY_FILE": str(private),
            "JWT_PUBLIC_KEY_FILE": str(public),
            "LOG_LEVEL": "WARNING",
        }
        subprocess.run([sys.executable, "-m", "titanium", "db", "upgrade"], env=env, check=True)
        stack = Stack(env=env, ports=PORTS)
        stack.start()
        try:
            measure(stack.url("gateway"))
        finally:
            stack.stop()


def measure(gateway: str) -> None:
    """Seed posts, then load the list page cold and warm in Chromium."""
    with httpx.Client(base_url=gateway, timeout=30) as client:
        credentials = {"username": "painter", "password": "benchmark-pw"}
        client.post("/api/register", json={**credentials, "email": "p@example.com"})
        token = client.post("/api/login", json=credentials).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        for i in range(30):
            body = {"title": f"Post {i}", "content": "Paint me. " * 50, "category_id": 1 + i % 3}
            client.post("/blog/api/posts", json=body, headers=headers).raise_for_status()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page()

        def paint() -> float:
            page.goto(f"{gateway}/blog/")
            page.wait_for_selector('[data-page="list"]')
            page.wait_for_function(f"{FCP_ENTRIES}.length > 0")
            return float(page.evaluate(f"{FCP_ENTRIES}[0].startTime"))

        cold = paint()
        warm = [paint() for _ in range(7)]
        browser.close()
    print(
        f"first contentful paint of /blog/: cold {cold:.0f} ms; warm best {min(warm):.0f} ms, "
        f"median {statistics.median(warm):.0f} ms (target < 100 ms)"
    )


if __name__ == "__main__":
    main()
