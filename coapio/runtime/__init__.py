"""The runtime: the anyio glue that drives the sans-IO core and the transports.

The :class:`~coapio.Context` owns one task group; in it run the transports' socket tasks and the token
manager service. The client path (block-wise, the place of OSCORE, the token manager, the transport) and
the server path (transport, token manager, site) meet in Pipes, whose cancel scopes carry loss of interest.
"""
