"""API keys: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Response

from pushbase.api.deps import ServicesDep, require
from pushbase.api.models import ERRORS, KeyCreate, KeyCreated, KeyList
from pushbase.api.responses import JSON
from pushbase.auth import ApiKey, Scope, hash_key, new_secret
from pushbase.errors import PushbaseError, not_found
from pushbase.schema import check_dataset_id

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ERRORS)


def create_key(svc: ServicesDep, name: str, scopes: list[Scope], datasets: list[str] | None):
    """Store a new key and return it with its secret (the only time it is visible)."""
    secret = new_secret()
    key = ApiKey(name=name, scopes=scopes, datasets=datasets, key_hash=hash_key(secret))
    svc.store.add_key(key)
    return key, secret


def within(caller: ApiKey, datasets: list[str] | None) -> bool:
    """A key limited to `datasets` gives no more than `caller` has: unlimited callers may
    grant anything; a limited one only a list inside its own (never an unlimited key)."""
    if caller.datasets is None:
        return True
    return datasets is not None and set(datasets) <= set(caller.datasets)


@router.post("", status_code=201, response_model=KeyCreated)
def post_key(body: KeyCreate, svc: ServicesDep, caller: ApiKey = require(Scope.admin)):
    """Create a key. A key limited to datasets may only create keys limited to some of its
    own datasets (403 otherwise), so no key can mint a key that reaches further."""
    for dataset_id in body.datasets or []:
        check_dataset_id(dataset_id)
    if not within(caller, body.datasets):
        raise PushbaseError(
            "forbidden",
            "this key is limited to datasets: it may only create keys limited to some of them"
            " (give `datasets`)",
            403,
            {"datasets": caller.datasets},
        )
    key, secret = create_key(svc, body.name, sorted(set(body.scopes)), body.datasets)
    return JSON({**key.model_dump(mode="json"), "key": secret}, status_code=201)


@router.get("", response_model=KeyList)
def list_keys(svc: ServicesDep, caller: ApiKey = require(Scope.admin)):
    """Every key, or for a key limited to datasets, the keys limited to some of its own."""
    keys = [k for k in svc.store.list_keys() if within(caller, k.datasets)]
    return JSON({"keys": [k.model_dump(mode="json") for k in keys]})


@router.delete("/{key_id}", status_code=204, response_class=Response)
def revoke_key(key_id: str, svc: ServicesDep, caller: ApiKey = require(Scope.admin)):
    """Revoke a key the caller may list (404 for any other, as for an unknown id)."""
    if caller.datasets is not None:
        target = next((k for k in svc.store.list_keys() if k.id == key_id), None)
        if target is None or not within(caller, target.datasets):
            raise not_found("key", key_id)
    if not svc.store.revoke_key(key_id):
        raise not_found("key", key_id)
    return Response(status_code=204)
