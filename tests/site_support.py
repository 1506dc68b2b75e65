"""Resources several interop and transport tests serve: a store, an observable counter, who-am-I."""

from __future__ import annotations

from coapio import Code, Message, ObservableResource, Resource


class WhoAmI(Resource):
    """GET: who the request was authenticated as (``str(request.security)``; "None" if nobody)."""

    def render_get(self, request: Message) -> Message:
        return Message(payload=str(request.security).encode())


class Store(Resource):
    """GET returns what the last PUT stored; ``puts`` records each PUT's size (large ones arrive
    block-wise, reassembled)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = b"hello from coapio"
        self.puts: list[int] = []

    def render_get(self, request: Message) -> Message:
        return Message(payload=self.data)

    def render_put(self, request: Message) -> Message:
        self.puts.append(len(request.payload))
        self.data = request.payload
        return Message(code=Code.CHANGED)


class Counter(ObservableResource):
    """Observable ``n=<value>``; records the Observe option of every request it renders."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0
        self.observe_options: list[int | None] = []

    def render_get(self, request: Message) -> Message:
        self.observe_options.append(request.opt.observe)
        return Message(payload=b"n=%d" % self.value)

    def bump(self) -> None:
        self.value += 1
        self.notify()
