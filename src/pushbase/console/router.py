"""Pages of the web console.

The pages are Jinja2 shells with no data in them: the browser keeps the API key in
sessionStorage (never a cookie, never sent to these routes) and `console.js` fetches the
native /v1 API with it. So the console can do exactly what the key may do, and nothing here
needs authentication. No build step: one script, one stylesheet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from pushbase import __version__
from pushbase.errors import not_found

HERE = Path(__file__).parent
STATIC = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=str(HERE / "templates"))


def page(request: Request, name: str, title: str, **context: str) -> Response:
    response = templates.TemplateResponse(
        request,
        name,
        {"title": title, "version": __version__, "page": name.removesuffix(".html"), **context},
    )
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("")
@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/console/datasets", status_code=307)


@router.get("/signin")
def signin(request: Request) -> Response:
    return page(request, "signin.html", "Sign in")


@router.get("/datasets")
def datasets(request: Request) -> Response:
    return page(request, "datasets.html", "Datasets")


@router.get("/datasets/new")
def new_dataset(request: Request) -> Response:
    return page(request, "new_dataset.html", "New dataset")


@router.get("/datasets/{dataset_id}")
def dataset(request: Request, dataset_id: str) -> Response:
    return page(request, "dataset.html", dataset_id, dataset_id=dataset_id)


@router.get("/jobs")
def jobs(request: Request) -> Response:
    return page(request, "jobs.html", "Jobs")


@router.get("/jobs/{job_id}")
def job(request: Request, job_id: str) -> Response:
    return page(request, "job.html", job_id, job_id=job_id)


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    if name not in STATIC:
        raise not_found("file", name)
    return FileResponse(HERE / "static" / name, media_type=STATIC[name],
                        headers={"Cache-Control": "no-cache"})  # fmt: skip
