"""Datasets: create (from columns or a sample), list, show, change, drop; inference."""

from __future__ import annotations

import secrets
import shlex
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from pushbase.api.deps import DatasetIdPath, ServicesDep, dataset_for, require
from pushbase.api.models import (
    ERRORS,
    DatasetCreate,
    DatasetList,
    DatasetPatch,
    InferRequest,
    InferResponse,
    Instructions,
)
from pushbase.api.responses import JSON
from pushbase.auth import ApiKey, Scope
from pushbase.errors import PushbaseError, not_found
from pushbase.infer import infer_columns
from pushbase.schema import ColumnType, Dataset, check_columns, check_dataset_id

router = APIRouter(prefix="/v1", tags=["datasets"], responses=ERRORS)


def _with_count(svc: ServicesDep, dataset: Dataset) -> Dataset:
    dataset.row_count = svc.store.row_count(dataset.id)
    return dataset


@router.post("/datasets", status_code=201, response_model=Dataset)
def create_dataset(body: DatasetCreate, svc: ServicesDep, key: ApiKey = require(Scope.admin)):
    if body.columns is not None and body.sample is not None:
        raise PushbaseError("invalid_request", "give either columns or sample, not both", 400)
    if body.columns is None and body.sample is None:
        raise PushbaseError("invalid_request", "give columns or a sample to infer them from", 400)
    columns = body.columns if body.columns is not None else infer_columns(body.sample)
    if not columns:
        raise PushbaseError("invalid_request", "a dataset needs at least one column", 400)
    if body.id is None and key.datasets is not None:
        raise PushbaseError(
            "forbidden",
            "this key is limited to datasets: give the `id` of one of them",
            403,
            {"datasets": key.datasets},
        )
    dataset_id = check_dataset_id(body.id) if body.id is not None else secrets.token_hex(6)
    key.check(Scope.admin, dataset_id)  # a key limited to datasets creates only those
    now = datetime.now(UTC)
    dataset = Dataset(
        id=dataset_id,
        name=body.name or dataset_id,
        description=body.description,
        columns=check_columns(columns, body.unique_key),
        unique_key=body.unique_key,
        unknown_fields=body.unknown_fields,
        created_at=now,
        updated_at=now,
    )
    svc.store.create_dataset(dataset)
    dataset.row_count = 0
    return JSON(dataset.public(), status_code=201)


@router.get("/datasets", response_model=DatasetList)
def list_datasets(svc: ServicesDep, key: ApiKey = require(Scope.read)):
    datasets = [
        _with_count(svc, d).public() for d in svc.store.list_datasets() if key.allows_dataset(d.id)
    ]
    return JSON({"datasets": datasets})


@router.get("/datasets/{dataset_id}", response_model=Dataset)
def get_dataset(dataset_id: DatasetIdPath, svc: ServicesDep, key: ApiKey = require(Scope.read)):
    return JSON(_with_count(svc, dataset_for(svc, key, dataset_id, Scope.read)).public())


@router.patch("/datasets/{dataset_id}", response_model=Dataset)
def patch_dataset(
    dataset_id: DatasetIdPath,
    body: DatasetPatch,
    svc: ServicesDep,
    key: ApiKey = require(Scope.admin),
):
    dataset = dataset_for(svc, key, dataset_id, Scope.admin)
    for column in body.add_columns:
        if not column.nullable:
            raise PushbaseError(
                "invalid_column",
                f"added column {column.name!r} must be nullable: stored rows have no value for it",
                400,
            )
    check_columns(
        [*dataset.columns, *body.add_columns], dataset.unique_key, stored=len(dataset.columns)
    )
    if body.name is not None:
        dataset.name = body.name
    if body.description is not None:
        dataset.description = body.description
    if body.unknown_fields is not None:
        dataset.unknown_fields = body.unknown_fields
    dataset.columns.extend(body.add_columns)
    dataset.updated_at = datetime.now(UTC)
    svc.store.update_dataset(dataset, body.add_columns)
    return JSON(_with_count(svc, dataset).public())


@router.delete("/datasets/{dataset_id}", status_code=204, response_class=Response)
def drop_dataset(dataset_id: DatasetIdPath, svc: ServicesDep, key: ApiKey = require(Scope.admin)):
    check_dataset_id(dataset_id)
    key.check(Scope.admin, dataset_id)
    if not svc.store.drop_dataset(dataset_id):
        raise not_found("dataset", dataset_id)
    return Response(status_code=204)


@router.post("/schema/infer", response_model=InferResponse, tags=["schema"])
async def infer_schema(body: InferRequest, key: ApiKey = require(Scope.read)):
    columns = await run_in_threadpool(infer_columns, body.sample)
    return JSON({"columns": [c.model_dump(mode="json") for c in columns]})


_EXAMPLES: dict[ColumnType, Any] = {
    ColumnType.string: "text",
    ColumnType.integer: 42,
    ColumnType.number: 3.14,
    ColumnType.boolean: True,
    ColumnType.date: "2024-01-31",
    ColumnType.datetime: "2024-01-31T12:00:00Z",
    ColumnType.json: {"any": ["json"]},
}


def base_url(request: Request, svc: ServicesDep) -> str:
    return (svc.settings.public_url or str(request.base_url)).rstrip("/")


@router.get("/datasets/{dataset_id}/instructions", response_model=Instructions)
def instructions(
    dataset_id: DatasetIdPath, request: Request, svc: ServicesDep, key: ApiKey = require(Scope.read)
):
    """Ready-to-run curl commands for this dataset on this server."""
    dataset = dataset_for(svc, key, dataset_id, Scope.read)
    url = base_url(request, svc)
    records = f"{url}/v1/datasets/{dataset.id}/records"
    auth = '-H "x-api-key: $PUSHBASE_API_KEY"'
    example = {c.name: _EXAMPLES[c.type] for c in dataset.columns}
    keys_only = {k: example[k] for k in dataset.unique_key}
    body = shlex.quote(orjson.dumps([example]).decode())
    commands = {
        "push": f"curl -X POST '{records}?method=upsert&wait=10' {auth}"
        f" -H 'Content-Type: application/json' -d {body}",
        "push_ndjson": f"curl -X POST '{records}?method=insert' {auth}"
        f" -H 'Content-Type: application/x-ndjson' --data-binary @rows.ndjson",
        "push_csv": f"curl -X POST '{records}?method=upsert' {auth}"
        f" -H 'Content-Type: text/csv' --data-binary @rows.csv",
        "delete_all": f"curl -X DELETE '{records}' {auth}",
        "job_status": f"curl '{url}/v1/jobs/JOB_ID' {auth}",
        "read": f"curl '{records}?limit=10' {auth}",
    }
    if dataset.unique_key:
        keys_body = shlex.quote(orjson.dumps([keys_only]).decode())
        commands["delete"] = (
            f"curl -X POST '{records}?method=delete' {auth}"
            f" -H 'Content-Type: application/json' -d {keys_body}"
        )
    return JSON({"dataset_id": dataset.id, "base_url": url, "commands": commands})
