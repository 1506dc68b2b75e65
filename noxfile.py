"""Developer sessions: ``nox -s tests lint typing docs`` (and ``bench`` for the benchmarks)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing", "docs"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite; pass pytest arguments after ``--``."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Long hypothesis runs of every decoder and of the stateful message-layer test."""
    session.install("-e", ".[test]")
    session.env["HYPOTHESIS_PROFILE"] = "fuzz"
    session.env["COAPIO_STATEFUL_EXAMPLES"] = "5000"
    session.run("pytest", "-q", "-k", "fuzz or stateful or roundtrip or round_trip", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("mypy", "--strict", "coapio")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs; warnings are errors."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def bench(session: nox.Session) -> None:
    """Codec micro-benchmarks, server throughput of coapio, aiocoap and libcoap, observe fan-out and
    block-wise GET of coapio against aiocoap.

    Arguments after ``--`` go to ``benchmarks/server_throughput.py`` (e.g. ``-- --duration 10 --json``).
    The throughput benchmark needs a C compiler (cc) and libcoap's ``coap-server-notls`` for its row.
    ``observe_fanout.py`` (1,000 and 10,000 observers) and ``blockwise_get.py`` (1 MiB through Block2)
    take about 30 s each; run them directly for their options.
    """
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/codec.py")
    session.run("python", "benchmarks/server_throughput.py", *session.posargs)
    session.run("python", "benchmarks/observe_fanout.py")
    session.run("python", "benchmarks/blockwise_get.py")
