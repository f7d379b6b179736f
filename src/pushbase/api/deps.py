"""Request dependencies: the server's parts and the caller's key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Path, Request
from fastapi.concurrency import run_in_threadpool

from pushbase.auth import ENV_ADMIN, ApiKey, Scope, hash_key, matches
from pushbase.errors import PushbaseError, not_found
from pushbase.ingest import Services
from pushbase.schema import DATASET_ID_RE, Dataset, check_dataset_id

T = TypeVar("T")


async def services(request: Request) -> Services:
    return request.app.state.services


async def catalog(svc: Services, fn: Callable[..., T], *args: Any) -> T:
    """Call a catalog lookup: inline when the store keeps its catalog in memory, else in a
    thread. Each thread hop waits for the GIL, which costs acknowledgements under load."""
    if svc.store.memory_catalog:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


ServicesDep = Annotated[Services, Depends(services)]
# The id rule is documented in the OpenAPI document; the route checks it itself
# (`check_dataset_id`) so that a bad id is a 400 `invalid_dataset_id` as in a body.
DatasetIdPath = Annotated[
    str,
    Path(
        description="dataset id (400 `invalid_dataset_id` when it breaks the rule)",
        json_schema_extra={"pattern": DATASET_ID_RE.pattern},
    ),
]


def _presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


async def authenticate(
    svc: ServicesDep,
    x_api_key: Annotated[str | None, Header(description="API key")] = None,
    authorization: Annotated[str | None, Header(description="Bearer API key")] = None,
) -> ApiKey:
    secret = _presented_key(x_api_key, authorization)
    if secret is None:
        raise PushbaseError(
            "unauthorized",
            "send an API key in x-api-key or Authorization: Bearer",
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    admin = svc.settings.admin_key
    if admin and matches(secret, hash_key(admin)):
        return ENV_ADMIN
    key = await catalog(svc, svc.store.find_key, hash_key(secret))
    if key is None:
        raise PushbaseError(
            "invalid_key", "this API key is not valid", 401, headers={"WWW-Authenticate": "Bearer"}
        )
    return key


KeyDep = Annotated[ApiKey, Depends(authenticate)]


def require(*scopes: Scope):
    """A dependency that checks the caller's key holds one of `scopes`."""

    async def check(key: KeyDep) -> ApiKey:
        if not any(key.allows(scope) for scope in scopes):
            key.check(scopes[0])
        return key

    return Depends(check)


def dataset_for(svc: Services, key: ApiKey, dataset_id: str, scope: Scope) -> Dataset:
    """The dataset if the key may use it with `scope`; 404 when it does not exist."""
    check_dataset_id(dataset_id)
    key.check(scope, dataset_id)
    return _found(dataset_id, svc.store.get_dataset(dataset_id))


async def dataset_to_push(svc: Services, key: ApiKey, dataset_id: str) -> Dataset:
    """`dataset_for` with write scope, from the store's recent copy when it holds one: a
    push uses only the id and unique key, which never change (`Store.recent_dataset`)."""
    check_dataset_id(dataset_id)
    key.check(Scope.write, dataset_id)
    dataset = svc.store.recent_dataset(dataset_id)
    if dataset is None:
        dataset = await catalog(svc, svc.store.get_dataset, dataset_id)
    return _found(dataset_id, dataset)


def _found(dataset_id: str, dataset: Dataset | None) -> Dataset:
    if dataset is None:
        raise not_found("dataset", dataset_id)
    return dataset
