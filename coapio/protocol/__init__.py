"""The sans-IO protocol core: CoAP's rules as values and synchronous state machines.

Nothing here opens a socket, starts a task or reads a clock (time is an argument), and nothing imports
anyio or trio: every module is one noun of the RFCs (the message and its codec, options, URIs, the
RFC 7252 message layer, block-wise, Observe, Echo, link-format) and can be tested without an event loop.
"""
