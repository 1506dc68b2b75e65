"""Shared test configuration: hypothesis profiles and the interop-peer gate.

Hypothesis profiles: ``ci`` (the default, quick) and ``fuzz`` (long runs), chosen with the environment
variable ``HYPOTHESIS_PROFILE``. ``COAPIO_FUZZ_EXAMPLES`` sets the number of examples per property in
either profile, e.g. ``HYPOTHESIS_PROFILE=fuzz COAPIO_FUZZ_EXAMPLES=200000 pytest tests/test_message.py``.

Interop tests call :func:`require_interop`; a missing peer skips them, unless ``COAPIO_REQUIRE_INTEROP=1``
makes it a failure (CI sets it where the peers are installed).
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest
from hypothesis import HealthCheck, settings


def _examples(default: int) -> int:
    return int(os.environ.get("COAPIO_FUZZ_EXAMPLES", default))


settings.register_profile("ci", max_examples=_examples(100), deadline=None)
settings.register_profile(
    "fuzz",
    max_examples=_examples(20_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def interop_unavailable(reason: str) -> NoReturn:
    """Skip the calling test module, or fail it when ``COAPIO_REQUIRE_INTEROP=1``."""
    if os.environ.get("COAPIO_REQUIRE_INTEROP") == "1":
        pytest.fail(f"COAPIO_REQUIRE_INTEROP=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_interop(module_name: str) -> ModuleType:
    """Import the peer ``module_name``, or give up as :func:`interop_unavailable` says."""
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        interop_unavailable(f"interop peer {module_name!r} is not importable: {exc}")


def require_binary(name: str) -> str:
    """The path of the interop peer program ``name`` (e.g. ``coap-client-notls``), or skip/fail."""
    path = shutil.which(name)
    if path is None:
        interop_unavailable(f"interop peer {name!r} is not installed (Debian package libcoap3-bin)")
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse ``@pytest.mark.anyio``: under pytest-trio's trio mode such a test silently runs on trio.

    Tests that must run on asyncio call ``anyio.run(..., backend="asyncio")`` from a sync test instead
    (see tests/test_backends.py).
    """
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            raise pytest.UsageError(f"{item.nodeid}: use anyio.run(..., backend=...), not the anyio mark")
