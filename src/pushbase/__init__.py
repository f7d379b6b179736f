"""pushbase: push data into managed, typed datasets over HTTP.

`from pushbase import Client` gives the Python client; the names below are loaded on first
use, so that `import pushbase` (and the server) stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_CLIENT_NAMES = frozenset(
    {
        "AsyncClient",
        "BadRequest",
        "Client",
        "Conflict",
        "ConnectionFailed",
        "Forbidden",
        "NotFound",
        "PayloadTooLarge",
        "PushResult",
        "QueueFull",
        "RowError",
        "RowsFailed",
        "ServerError",
        "Unauthorized",
        "UnsupportedMediaType",
        "ValidationError",
        "WaitTimeout",
    }
)

__all__ = ["PushbaseError", "__version__", *sorted(_CLIENT_NAMES)]

if TYPE_CHECKING:
    from pushbase.client import (
        AsyncClient as AsyncClient,
    )
    from pushbase.client import (
        BadRequest as BadRequest,
    )
    from pushbase.client import (
        Client as Client,
    )
    from pushbase.client import (
        Conflict as Conflict,
    )
    from pushbase.client import (
        ConnectionFailed as ConnectionFailed,
    )
    from pushbase.client import (
        Forbidden as Forbidden,
    )
    from pushbase.client import (
        NotFound as NotFound,
    )
    from pushbase.client import (
        PayloadTooLarge as PayloadTooLarge,
    )
    from pushbase.client import (
        PushResult as PushResult,
    )
    from pushbase.client import (
        QueueFull as QueueFull,
    )
    from pushbase.client import (
        RowError as RowError,
    )
    from pushbase.client import (
        RowsFailed as RowsFailed,
    )
    from pushbase.client import (
        ServerError as ServerError,
    )
    from pushbase.client import (
        Unauthorized as Unauthorized,
    )
    from pushbase.client import (
        UnsupportedMediaType as UnsupportedMediaType,
    )
    from pushbase.client import (
        ValidationError as ValidationError,
    )
    from pushbase.client import (
        WaitTimeout as WaitTimeout,
    )
    from pushbase.errors import PushbaseError as PushbaseError


def __getattr__(name: str) -> Any:
    if name == "PushbaseError":
        from pushbase.errors import PushbaseError as PushbaseError

        return PushbaseError
    if name in _CLIENT_NAMES:
        from pushbase import client

        return getattr(client, name)
    raise AttributeError(f"module 'pushbase' has no attribute {name!r}")
