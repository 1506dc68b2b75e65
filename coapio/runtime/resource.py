"""Server-side resources and the site that routes requests to them by Uri-Path.

A :class:`Resource` answers methods with ``render_get``, ``render_post``, ... A plain ``def`` renderer runs
inline on the endpoint's socket task (it must not block: the fast path); an ``async def`` renderer runs in
its own task under a cancel scope that the client's loss of interest cancels. Either returns a
:class:`~coapio.Message` (its code defaults to the method's usual success code) or raises a
:class:`~coapio.error.RenderableError` to answer with that error code.

A :class:`Site` maps paths to resources. Adding a :class:`Site` under a path nests it; adding a resource with
``subtree=True`` lets it answer every path below (it sees the rest in :meth:`Resource.rest_of_path`).
``/.well-known/core`` is generated from the site's link descriptions and filtered per RFC 6690 §4.1.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import attrs

from .. import error
from ..protocol.codes import Code
from ..protocol.contentformat import ContentFormat
from ..protocol.linkformat import Link, filter_links, serialize_links
from ..protocol.message import Message

__all__ = [
    "Renderer",
    "Resource",
    "Site",
    "WellKnownCore",
    "check_preconditions",
    "default_success_code",
    "validate_etag",
]

#: A renderer: a method of a resource taking the request and returning the response.
Renderer = Callable[[Message], Message | Awaitable[Message]]

_METHOD_NAMES: dict[int, str] = {
    Code.GET: "render_get",
    Code.POST: "render_post",
    Code.PUT: "render_put",
    Code.DELETE: "render_delete",
    Code.FETCH: "render_fetch",
    Code.PATCH: "render_patch",
    Code.IPATCH: "render_ipatch",
}

_DEFAULT_SUCCESS: dict[int, Code] = {
    Code.GET: Code.CONTENT,
    Code.FETCH: Code.CONTENT,
    Code.POST: Code.CHANGED,
    Code.PUT: Code.CHANGED,
    Code.DELETE: Code.DELETED,
    Code.PATCH: Code.CHANGED,
    Code.IPATCH: Code.CHANGED,
}


def default_success_code(method: Code) -> Code:
    """The code a renderer's response gets when it leaves the code empty."""
    return _DEFAULT_SUCCESS.get(method, Code.CONTENT)


@attrs.frozen(slots=True)
class Handler:
    """A resolved renderer: the function, whether it runs as a task, and its resource.

    ``streams``: the function is ``render_to_pipe(request, pipe)``, which answers through the Pipe.
    """

    function: Renderer | Callable[[Message, Any], Awaitable[None]]
    is_async: bool
    resource: Resource
    streams: bool = False


class Resource:
    """Base class of server resources; see the module docstring.

    For several responses to one request (an observation whose notifications are not re-renderings of
    one state), define ``async def render_to_pipe(self, request, pipe)`` and call
    ``pipe.add_response(message, is_last=...)`` on the :class:`~coapio.ServerPipe` as often as needed.
    It runs in a task under the Pipe's producer scope, which the client's loss of interest cancels, so
    its ``finally`` blocks run when the client goes away. It receives requests of every method.

    ``link_attributes`` describe the resource in ``/.well-known/core`` (e.g. ``{"rt": "temperature",
    "ct": 0, "obs": None}``; ``None`` makes a valueless attribute). Set it to None to hide the resource.
    """

    link_attributes: Mapping[str, str | int | None] | None = {}
    #: Require proof of freshness (RFC 9175 §2.3) for requests that change state (all but GET and FETCH):
    #: without a recent Echo value they are answered 4.01 with one, and a client retries with it.
    requires_fresh: bool = False
    #: Serve only authenticated requests (``request.security`` set by OSCORE or DTLS): True for any
    #: identity, or the identities allowed (e.g. ``{":client1"}``); others are answered 4.01.
    requires_security: bool | Collection[str] = False

    def __init__(self) -> None:
        self._handlers: dict[int, Handler] = {}
        self._pipe_handler: Handler | None = None
        to_pipe = getattr(self, "render_to_pipe", None)
        if to_pipe is not None:
            if not inspect.iscoroutinefunction(to_pipe):
                raise TypeError(f"{type(self).__name__}.render_to_pipe must be an async def")
            self._pipe_handler = Handler(to_pipe, True, self, streams=True)
        for code, name in _METHOD_NAMES.items():
            function = getattr(self, name, None)
            if function is not None:
                self._handlers[code] = Handler(function, inspect.iscoroutinefunction(function), self)

    def handler(self, method: Code) -> Handler | None:
        """The renderer for ``method``, or None when the resource does not allow it.

        A resource with ``render_to_pipe`` gets every request there (it answers 4.05 itself by raising
        :class:`~coapio.error.MethodNotAllowed`); plain ``render_*`` methods are not consulted then.
        """
        if self._pipe_handler is not None:
            return self._pipe_handler
        return self._handlers.get(method)

    @property
    def allowed_methods(self) -> list[Code]:
        return [Code(c) for c in self._handlers]

    def link(self, path: Sequence[str]) -> Link | None:
        """This resource's entry in ``/.well-known/core`` when it sits at ``path``."""
        attributes = self.link_attributes
        if attributes is None:
            return None
        href = "/" + "/".join(path)
        return Link(href, [(k, None if v is None else str(v)) for k, v in attributes.items()])

    @staticmethod
    def rest_of_path() -> tuple[str, ...]:
        """In a renderer of a resource added with ``subtree=True``: the Uri-Path segments below its path."""
        return _rest_of_path.get()


#: The Uri-Path segments below the resource that is rendering (set by the dispatcher for each request).
_rest_of_path: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("coapio_rest", default=())


class Site:
    """Routes requests by Uri-Path to resources; see the module docstring."""

    def __init__(self, *, well_known_core: bool = True) -> None:
        self._exact: dict[tuple[str, ...], Resource] = {}
        self._subtrees: dict[tuple[str, ...], Resource | Site] = {}
        if well_known_core:
            self._exact[(".well-known", "core")] = WellKnownCore(self)

    def add(self, path: str | Sequence[str], resource: Resource | Site, *, subtree: bool = False) -> None:
        """Serve ``resource`` at ``path`` (``"a/b"`` or ``("a", "b")``; ``""`` or ``()`` is the root).

        A :class:`Site` always serves the subtree under ``path``; a resource does with ``subtree=True``.
        """
        key = _path_key(path)
        if isinstance(resource, Site) or subtree:
            self._subtrees[key] = resource
        else:
            self._exact[key] = resource

    def remove(self, path: str | Sequence[str]) -> None:
        key = _path_key(path)
        self._exact.pop(key, None)
        self._subtrees.pop(key, None)

    def resolve(self, path: tuple[str, ...]) -> tuple[Resource, tuple[str, ...]] | None:
        """The resource for ``path`` and the segments left below it (for subtree resources)."""
        resource = self._exact.get(path)
        if resource is not None:
            return resource, ()
        subtrees = self._subtrees
        if subtrees:
            for i in range(len(path), -1, -1):
                found = subtrees.get(path[:i])
                if found is None:
                    continue
                if isinstance(found, Site):
                    return found.resolve(path[i:])
                return found, path[i:]
        return None

    def links(self, prefix: tuple[str, ...] = ()) -> list[Link]:
        """Link descriptions of every resource of this site and nested sites, sorted by path."""
        links: list[Link] = []
        for path, entry in [*self._exact.items(), *self._subtrees.items()]:
            if isinstance(entry, Site):
                links.extend(entry.links(prefix + path))
            elif not isinstance(entry, WellKnownCore):
                link = entry.link(prefix + path)
                if link is not None:
                    links.append(link)
        return sorted(links, key=lambda link: link.href)


def _path_key(path: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(path, str):
        path = path.strip("/")
        return tuple(path.split("/")) if path else ()
    return tuple(path)


class WellKnownCore(Resource):
    """``/.well-known/core``: the site's resources in RFC 6690 link format, filtered by the query."""

    link_attributes = None

    def __init__(self, site: Site):
        super().__init__()
        self.site = site

    def render_get(self, request: Message) -> Message:
        accept = request.opt.accept
        if accept is not None and accept != ContentFormat.LINK_FORMAT:
            raise error.NotAcceptable("/.well-known/core is served as application/link-format only")
        links = self.site.links()
        query = request.opt.uri_query
        if query:
            try:
                links = filter_links(links, query)
            except error.LinkFormatError as e:
                raise error.BadRequest(str(e)) from None
        response = Message(code=Code.CONTENT, payload=serialize_links(links).encode())
        response.opt.content_format = ContentFormat.LINK_FORMAT
        return response


def check_preconditions(request: Message, etag: bytes | None, *, exists: bool = True) -> None:
    """Enforce If-Match / If-None-Match (RFC 7252 §5.10.8) for a resource whose entity has ``etag``.

    Raises :class:`~coapio.error.PreconditionFailed` (4.12) when a condition fails. An empty If-Match
    value matches any existing representation.
    """
    if_match = request.opt.if_match
    if if_match and not (exists and any(v == b"" or v == etag for v in if_match)):
        raise error.PreconditionFailed("If-Match does not match the current representation")
    if request.opt.if_none_match and exists:
        raise error.PreconditionFailed("If-None-Match: the resource exists")


def validate_etag(request: Message, etag: bytes) -> Message | None:
    """A 2.03 Valid response when one of the request's ETags is the current ``etag`` (RFC 7252 §5.10.6)."""
    if etag in request.opt.etags:
        response = Message(code=Code.VALID)
        response.opt.etag = etag
        return response
    return None


def make_response(request: Message, result: Any) -> Message:
    """Complete a renderer's result: default the code, and check it is a response."""
    if not isinstance(result, Message):
        raise TypeError(f"a renderer must return a Message, not {type(result).__name__}")
    if result.code == Code.EMPTY:
        result.code = default_success_code(request.code)
    elif not result.code.is_response():
        raise TypeError(f"a renderer returned code {result.code.dotted}, which is not a response code")
    return result


def error_response(exc: error.RenderableError) -> Message:
    """The response for a library error raised by a renderer, with its diagnostic payload."""
    response = Message(code=exc.code, payload=exc.message.encode("utf-8"))
    for number, value in exc.options:
        response.opt.add(number, value)
    return response
