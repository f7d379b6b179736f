"""API keys: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Response

from pushbase.api.deps import ServicesDep, require
from pushbase.api.models import ERRORS, KeyCreate, KeyCreated, KeyList
from pushbase.api.responses import JSON
from pushbase.auth import ApiKey, Scope, hash_key, new_secret
from pushbase.errors import not_found
from pushbase.schema import check_dataset_id

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ERRORS)


def create_key(svc: ServicesDep, name: str, scopes: list[Scope], datasets: list[str] | None):
    """Store a new key and return it with its secret (the only time it is visible)."""
    secret = new_secret()
    key = ApiKey(name=name, scopes=scopes, datasets=datasets, key_hash=hash_key(secret))
    svc.store.add_key(key)
    return key, secret


@router.post("", status_code=201, response_model=KeyCreated)
def post_key(body: KeyCreate, svc: ServicesDep, caller: ApiKey = require(Scope.admin)):
    for dataset_id in body.datasets or []:
        check_dataset_id(dataset_id)
    key, secret = create_key(svc, body.name, sorted(set(body.scopes)), body.datasets)
    return JSON({**key.model_dump(mode="json"), "key": secret}, status_code=201)


@router.get("", response_model=KeyList)
def list_keys(svc: ServicesDep, caller: ApiKey = require(Scope.admin)):
    return JSON({"keys": [k.model_dump(mode="json") for k in svc.store.list_keys()]})


@router.delete("/{key_id}", status_code=204, response_class=Response)
def revoke_key(key_id: str, svc: ServicesDep, caller: ApiKey = require(Scope.admin)):
    if not svc.store.revoke_key(key_id):
        raise not_found("key", key_id)
    return Response(status_code=204)
