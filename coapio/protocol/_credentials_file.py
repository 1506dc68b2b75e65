"""Reading a credentials file (aiocoap's JSON format), shared by every layer that takes its entries."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["read_credentials_file"]


def read_credentials_file(path: str | os.PathLike[str], error: type[Exception]) -> tuple[Any, str]:
    """The parsed file and the directory its relative paths are taken from; ``error`` (a layer's
    CredentialsError) names the file and the reason when it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise error(f"{os.fspath(path)}: {e}") from None
    return data, os.path.dirname(os.path.abspath(path))
