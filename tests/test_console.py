"""The web console at /console, driven in real headless Chromium (Debian's /usr/bin/chromium).

`make test` installs Chromium when it is missing; run only these with `pytest -m browser`.
Set PUSHBASE_SCREENSHOTS=DIR to keep a screenshot of each page the flow visits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

try:
    from serverproc import ServerProcess
except ImportError:  # tests/ imported as a package
    from tests.serverproc import ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000


# -- without a browser: the routes themselves ------------------------------------------------


def test_console_pages_are_shells_with_security_headers(client: TestClient) -> None:
    home = client.get("/console", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/console/datasets"
    for path, page in [
        ("/console/signin", "signin"),
        ("/console/datasets", "datasets"),
        ("/console/datasets/new", "new_dataset"),
        ("/console/jobs", "jobs"),
    ]:
        response = client.get(path, headers={"x-api-key": ""})  # pages need no key
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert f'data-page="{page}"' in response.text
        assert "script-src 'self'" in response.headers["content-security-policy"]
    shell = client.get('/console/datasets/x"><img src=x onerror=alert(1)>')
    assert shell.status_code == 200
    assert "<img src=x" not in shell.text and "&lt;img src=x onerror=alert(1)&gt;" in shell.text
    script = client.get("/console/static/console.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/console/static/console.css").status_code == 200
    missing = client.get("/console/static/secrets.txt")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"
    assert not any(p.startswith("/console") for p in client.get("/openapi.json").json()["paths"])


# -- in Chromium -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("console-server"), workers=2)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: ServerProcess) -> Iterator[Any]:
    context = browser.new_context(base_url=server.url)
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on(
        "console",
        lambda msg: (
            problems.append(f"console: {msg.text}")
            if msg.type == "error" and "Failed to load resource" not in msg.text
            else None
        ),
    )
    yield tab
    context.close()
    assert not problems, problems  # script errors and CSP violations both land here


def snap(page: Any, name: str) -> None:
    folder = os.environ.get("PUSHBASE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def shell(
    command: str, server: ServerProcess, cwd: Path, exit_code: int = 0
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHBASE_")}
    env["PUSHBASE_API_KEY"] = server.admin_key
    env["PUSHBASE_URL"] = server.url
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=env, cwd=str(cwd), timeout=120
    )
    assert result.returncode == exit_code, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sign_in_create_from_sample_push_with_shown_curl_and_watch(
    page: Any, server: ServerProcess, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    # sign in: the key is checked, kept in sessionStorage, and we land where we wanted to go
    page.goto("/console")
    expect(page).to_have_url(re.compile(r"/console/signin\?next="))
    page.fill("#api-key", "not-a-key")
    page.click("#signin")
    expect(page.locator("#error")).to_contain_text("invalid_key")
    page.fill("#api-key", server.admin_key)
    page.click("#signin")
    expect(page).to_have_url(re.compile(r"/console/datasets$"))
    assert page.evaluate("sessionStorage.getItem('pushbase.apiKey')") == server.admin_key
    assert not page.context.cookies()
    snap(page, "1-datasets")

    # create a dataset from a pasted sample, editing the proposed columns first
    page.click("#new-dataset")
    expect(page).to_have_url(re.compile(r"/console/datasets/new$"))
    sample = {
        "visit_id": 1,
        "page": "/home",
        "seconds": 12.5,
        "at": "2024-03-01T10:00:00Z",
        "user": {"country": "NO"},
    }
    page.fill("#sample", orjson.dumps(sample).decode())
    page.click("#infer")
    rows = page.locator("#columns-edit tbody tr")
    expect(rows).to_have_count(5)
    names = [rows.nth(i).locator(".col-name").input_value() for i in range(5)]
    types = [rows.nth(i).locator(".col-type").input_value() for i in range(5)]
    assert names == ["visit_id", "page", "seconds", "at", "user.country"]
    assert types == ["integer", "string", "number", "datetime", "string"]
    rows.nth(1).locator(".col-name").fill("path")
    rows.nth(2).locator(".col-type").select_option("integer")
    rows.nth(0).locator(".col-key").check()
    page.fill("#dataset-id", "visits")
    page.fill("#dataset-name", "Site visits")
    snap(page, "2-new-dataset")
    page.click("#create")
    expect(page).to_have_url(re.compile(r"/console/datasets/visits$"))

    # the dataset page: schema, key, and commands ready to copy
    columns = page.locator("#columns tbody tr")
    expect(columns).to_have_count(5)
    expect(page.locator('#columns tr[data-name="path"] .type')).to_have_text("string")
    expect(page.locator('#columns tr[data-name="seconds"] .type')).to_have_text("integer")
    expect(page.locator("#summary")).to_contain_text("0 rows")
    expect(page.locator("#summary")).to_contain_text("key: visit_id")
    expect(page.locator("#no-rows")).to_be_visible()
    curl_push = page.locator("#cmd-curl-push")
    expect(curl_push).to_be_visible()
    command = curl_push.text_content()
    assert (
        command.startswith("curl -X POST") and f"{server.url}/v1/datasets/visits/records" in command
    )
    for name in ("push-csv", "delete", "delete-all"):
        assert page.locator(f"#cmd-curl-{name}").text_content().startswith("curl ")

    # push through the shown curl commands, as a user would paste them
    pushed = orjson.loads(shell(command, server, tmp_path).stdout)
    assert pushed["status"] == "succeeded" and pushed["stats"]["inserted"] == 1
    (tmp_path / "rows.csv").write_text(
        "visit_id,path,seconds,at,user.country\n"
        "1,/a,3,2024-03-02 08:00,SE\n"
        "2,/b,lots,2024-03-02 09:00,DK\n"
        "3,/c,7,2024-03-02T10:00:00Z,\n"
    )
    accepted = orjson.loads(
        shell(page.locator("#cmd-curl-push-csv").text_content(), server, tmp_path).stdout
    )
    assert accepted["job_id"].startswith("job_")

    # rows appear on their own (the page polls), with the job list
    expect(page.locator("#rows tbody tr")).to_have_count(3, timeout=TIMEOUT_MS)
    expect(page.locator("#summary")).to_contain_text("3 rows")
    expect(page.locator("#rows tbody")).to_contain_text("/c")
    expect(page.locator("#jobs tbody tr")).to_have_count(2)
    snap(page, "3-dataset")

    # the CLI and Python tabs show commands that work as shown
    page.click('#command-tabs button[data-tab="cli"]')
    cli_push = page.locator("#cmd-cli-push")
    expect(cli_push).to_be_visible()
    expect(page.locator("#cmd-curl-push")).to_be_hidden()
    assert cli_push.text_content() == "pushbase push visits rows.csv"
    cli_out = shell(cli_push.text_content(), server, tmp_path, exit_code=1).stdout  # a bad row
    assert "updated 2" in cli_out and "failed 1" in cli_out and "rows.csv:3" in cli_out
    page.click('#command-tabs button[data-tab="python"]')
    python_push = page.locator("#cmd-python-push").text_content()
    assert 'pb.push("visits", [{"visit_id": 42' in python_push
    result = subprocess.run(
        [sys.executable, "-c", python_push],
        capture_output=True,
        text=True,
        env={**os.environ, "PUSHBASE_API_KEY": server.admin_key},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:3] == ["0", "1", "0"]  # inserted, updated, failed

    # the jobs page follows every job live; a job page shows its stats and row errors
    page.click("#all-jobs")
    expect(page).to_have_url(re.compile(r"/console/jobs\?dataset=visits$"))
    jobs = page.locator("#jobs tbody tr")
    expect(jobs).to_have_count(4)
    expect(page.locator('#jobs tbody tr[data-status="succeeded"]')).to_have_count(4)
    snap(page, "4-jobs")
    page.locator(f'#jobs tbody tr[data-id="{accepted["job_id"]}"] a').first.click()
    expect(page).to_have_url(re.compile(rf"/console/jobs/{accepted['job_id']}$"))
    expect(page.locator("#status")).to_have_text("succeeded")
    expect(page.locator('[data-stat="received"]')).to_have_text("3")
    expect(page.locator('[data-stat="inserted"]')).to_have_text("2")
    expect(page.locator('[data-stat="failed"]')).to_have_text("1")
    errors = page.locator("#errors tbody tr")
    expect(errors).to_have_count(1)
    expect(errors.first).to_contain_text("seconds")
    expect(errors.first).to_contain_text("invalid_value")
    expect(errors.first).to_contain_text("lots")
    snap(page, "5-job")

    # signing out forgets the key
    page.click("#signout")
    expect(page).to_have_url(re.compile(r"/console/signin$"))
    assert page.evaluate("sessionStorage.getItem('pushbase.apiKey')") is None
    page.goto("/console/jobs")
    expect(page).to_have_url(re.compile(r"/console/signin\?next=%2Fconsole%2Fjobs$"))


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_dataset_values_are_shown_as_text_never_run(page: Any, server: ServerProcess) -> None:
    from playwright.sync_api import expect

    hostile = '<img src=x onerror="window.pwned=1">'
    with server.client() as http:
        created = http.post(
            "/v1/datasets",
            json={
                "id": "hostile",
                "name": hostile,
                "columns": [{"name": hostile, "type": "string"}, {"name": "n", "type": "integer"}],
            },
        )
        assert created.status_code == 201, created.text
        pushed = http.post(
            "/v1/datasets/hostile/records",
            params={"wait": 10},
            json=[{hostile: "<script>window.pwned=2</script>", "n": "x"}],
        )
        assert pushed.status_code == 200 and pushed.json()["stats"]["failed"] == 1
        http.post(
            "/v1/datasets/hostile/records",
            params={"wait": 10},
            json=[{hostile: "<b>bold</b>", "n": 1}],
        )
        job_id = pushed.json()["id"]
    page.goto("/console/signin")
    page.fill("#api-key", server.admin_key)
    page.click("#signin")
    expect(page.locator('#datasets tr[data-id="hostile"]')).to_contain_text(hostile)
    page.goto("/console/datasets/hostile")
    expect(page.locator("#rows tbody")).to_contain_text("<b>bold</b>")
    expect(page.locator("#columns tbody")).to_contain_text(hostile)
    page.goto(f"/console/jobs/{job_id}")
    expect(page.locator("#errors tbody")).to_contain_text("invalid_value")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#rows b, #columns img, #datasets img").count() == 0
