"""API keys: generation, hashing at rest, scopes and dataset limits (DESIGN §1)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from pushbase.errors import PushbaseError


class Scope(StrEnum):
    admin = "admin"
    write = "write"
    read = "read"


class ApiKey(BaseModel):
    id: str = Field(default_factory=lambda: f"key_{secrets.token_hex(8)}")
    name: str
    scopes: list[Scope]
    datasets: list[str] | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    key_hash: str = Field("", exclude=True)

    def allows(self, scope: Scope) -> bool:
        return Scope.admin in self.scopes or scope in self.scopes

    def allows_dataset(self, dataset_id: str) -> bool:
        return self.datasets is None or dataset_id in self.datasets

    def check(self, scope: Scope, dataset_id: str | None = None) -> None:
        if not self.allows(scope):
            raise PushbaseError(
                "forbidden",
                f"this key lacks the {scope.value!r} scope",
                403,
                {"scope": scope.value},
            )
        if dataset_id is not None and not self.allows_dataset(dataset_id):
            raise PushbaseError(
                "forbidden",
                f"this key may not use dataset {dataset_id!r}",
                403,
                {"dataset": dataset_id},
            )


def hash_key(secret: str) -> str:
    """Keys are long random strings, so one SHA-256 is the right hash (no stretching needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return f"pb_{secrets.token_urlsafe(32)}"


def matches(secret: str, expected_hash: str) -> bool:
    return hmac.compare_digest(hash_key(secret), expected_hash)


ENV_ADMIN = ApiKey(id="env_admin", name="PUSHBASE_ADMIN_KEY", scopes=[Scope.admin])
