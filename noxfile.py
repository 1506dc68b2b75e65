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
    session.env["COAPIO_FUZZ_SECONDS"] = "300"  # the socket flood of tests/test_fuzz_server.py
    session.run("pytest", "-q", "-k", "fuzz or stateful or roundtrip or round_trip", *session.posargs)


@nox.session
def atheris(session: nox.Session) -> None:
    """Coverage-guided fuzzing of each target in fuzz/ for 5 minutes (see fuzz/README.md).

    ``-- -max_total_time=60`` (or any libFuzzer flag) replaces the default; corpora live in .fuzz-corpus/.
    """
    session.install("-e", ".[test]", "atheris")
    flags = session.posargs or ["-max_total_time=300"]
    for target in ("message", "linkformat", "uri", "server"):
        corpus = f".fuzz-corpus/{target}"
        session.run("mkdir", "-p", corpus, external=True)
        session.run("python", f"fuzz/fuzz_{target}.py", corpus, *flags)


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
    """Every performance figure of issue 5 in one run, and its targets met or not: ``benchmarks/suite.py``.

    About 10 minutes on 2 cores. Arguments after ``--`` go to the suite: ``-- --quick`` (a smoke run of
    about a minute), ``-- --markdown``, ``-- --only server,client``, ``-- --save run.json``,
    ``-- --write-doc docs/performance.md``. Needs a C compiler (cc) for the load generator, libcoap's
    ``coap-server-notls`` (Debian: libcoap3-bin) and ``taskset``; aiocoap comes with the test extra. A
    missing peer shows as n/a in the table. Every script in ``benchmarks/`` also runs on its own.
    """
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/suite.py", *session.posargs)
