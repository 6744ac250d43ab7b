"""Screenshots of every dashboard page for the README (docs/screenshots/*.png).

Seeds a temporary SQLite database (app_dev/dashboard_seed.py), serves the app with uvicorn on
a free loopback port, logs in with headless chromium (Debian's, through Playwright) and saves
one full-page PNG per page. No request leaves the machine (the browser may reach 127.0.0.1 only).

    .venv/bin/python bench/dashboard/screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import tempfile
from pathlib import Path

import uvicorn
from playwright.async_api import Route, async_playwright

from app.config import load_settings
from app.jobs.models import JobStatus
from app.main import create_app
from app.state import app_state
from app_dev import dashboard_seed as seed

KEY = "screenshot-key-" + "x" * 24


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="dashboard-shots-") as tmp:
        settings = load_settings(
            environment="test",
            database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'shots.db'}",
            api_keys=KEY,
            run_worker=False,
            migrate_on_start=True,
        )
        app = create_app(settings)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
            url = f"http://127.0.0.1:{port}"
            async with app_state(app).sessionmaker() as session:
                await seed.seed_many_jobs(session, 40)
                await seed.seed_job(session, steps=12, model_name="trader", metadata={"team": "markets"})
                trained = await seed.seed_job(
                    session, steps=30, model_name="trader", metadata={"team": "markets"}
                )
                running = await seed.seed_job(
                    session, steps=5, total=20, status=JobStatus.RUNNING, model_name="trader-b"
                )
                await seed.seed_gateway_traffic(
                    session, 3_000, models=("trader:latest", "trader:best", "OpenPipe/Qwen3-14B-Instruct")
                )
                dataset = await seed.seed_dataset(session, groups=24)
                await seed.seed_captures(session, "traj-7f3a", steps=3)
                await session.commit()
            pages = {
                "overview": "/dashboard",
                "jobs": "/dashboard/jobs",
                "job": f"/dashboard/jobs/{trained.job_id}",
                "job-running": f"/dashboard/jobs/{running.job_id}",
                "models": "/dashboard/models",
                "model": f"/dashboard/models/{trained.model.id}",
                "datasets": "/dashboard/datasets",
                "dataset": f"/dashboard/datasets/{dataset.id}",
                "captures": "/dashboard/captures?trajectory_id=traj-7f3a",
            }

            async def local_only(route: Route) -> None:
                if route.request.url.startswith(url):
                    await route.continue_()
                else:
                    await route.abort("internetdisconnected")

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=args.chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
                )
                try:
                    context = await browser.new_context(viewport={"width": 1280, "height": 900})
                    await context.route("**/*", local_only)
                    page = await context.new_page()
                    await page.goto(f"{url}/dashboard/login")
                    await page.screenshot(path=str(args.out / "login.png"))
                    await page.fill("#api_key", KEY)
                    await page.click("button[type=submit]")
                    await page.wait_for_url(f"{url}/dashboard")
                    for name, path in pages.items():
                        await page.goto(url + path, wait_until="networkidle")
                        await page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
                        print(f"{args.out / name}.png")
                finally:
                    await browser.close()
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 30)
            sock.close()


if __name__ == "__main__":
    asyncio.run(main())
