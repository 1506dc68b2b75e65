"""The command-line tools: ``coapio-client`` (one request) and ``coapio-server`` (a demo server).

Each tool is a module with ``main(argv) -> int``; :mod:`coapio.cli.server` also offers
:func:`~coapio.cli.server.build_site`, the demo resources, for tests and benchmarks.
"""
