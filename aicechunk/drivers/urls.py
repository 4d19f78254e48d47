"""One normal form for object URLs, so that what is checked is what is read.

A URL is parsed once into a ``Location``: a lower-case scheme and authority, and the
path as segments decoded exactly once. Anything that could make two spellings name
different objects, or one spelling reach outside a prefix, is refused rather than
guessed at: userinfo, malformed percent-escapes, and segments that are empty, ``.`` or
``..``, or that hold ``/``, ``\\`` or a control character once decoded. Prefix checks
(virtual chunk containers, redirect targets) compare ``Location`` values segment by
segment, and readers fetch the decoded segments, never the raw string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from aicechunk.errors import InvalidLocation, redact_credentials

__all__ = ["Location", "parse_location", "redact_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALIASES = {"gcs": "gs"}  # two spellings of one object space
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# what a host or bucket name may hold; no backslash, '%', space or control character
_HOST = re.compile(r"[a-z0-9._~!$&'()*+,;=:\[\]-]*")


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed, normalized URL.

    ``authority`` is the lower-case host (with a non-default port) for http(s), the
    bucket for s3/gs, empty for file; ``segments`` are the decoded path segments;
    ``directory`` says the URL ended with ``/`` (a prefix rather than an object).
    """

    scheme: str
    authority: str
    segments: tuple[str, ...]
    directory: bool = False

    @property
    def path(self) -> str:
        """The decoded path without its leading ``/``: the object key."""
        return "/".join(self.segments)

    @property
    def origin(self) -> str:
        """``scheme://authority``."""
        return f"{self.scheme}://{self.authority}"

    def within(self, prefix: Location) -> bool:
        """Whether this location lies under ``prefix`` (same scheme and authority, and
        ``prefix``'s segments lead this one's)."""
        n = len(prefix.segments)
        return (
            self.scheme == prefix.scheme
            and self.authority == prefix.authority
            and self.segments[:n] == prefix.segments
            and (len(self.segments) > n or self.directory == prefix.directory)
        )

    def __str__(self) -> str:
        path = quote(self.path, safe="/")
        return f"{self.origin}/{path}{'/' if self.directory and self.segments else ''}"


def parse_location(url: str, *, allow_query: bool = False) -> Location:
    """Parse and normalize ``url``; raise ``InvalidLocation`` saying what is wrong.

    ``allow_query=True`` accepts (and ignores) a query string, as redirect targets may
    carry one (a signed URL); it never changes which path the location names.
    """
    if not isinstance(url, str):
        raise InvalidLocation(repr(url), f"a URL must be a str, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        # never urlsplit's words: they quote the authority, where a password can be
        problem = "the port is not a number from 0 to 65535" if "Port" in str(err) else None
        raise InvalidLocation(
            url, f"not a valid URL ({problem or 'malformed authority'})"
        ) from None
    scheme = parts.scheme.lower()
    if not scheme or not url[len(scheme) :].startswith("://"):
        raise InvalidLocation(url, "expected scheme://authority/path")
    scheme = _ALIASES.get(scheme, scheme)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidLocation(url, "credentials in a URL are not accepted here")
    if parts.fragment or url.endswith("#"):
        raise InvalidLocation(url, "a URL fragment ('#') is not accepted here")
    if (parts.query or url.endswith("?")) and not allow_query:
        raise InvalidLocation(url, "a query string ('?') is not accepted here")
    host = (parts.hostname or "").lower()
    if not _HOST.fullmatch(host):
        raise InvalidLocation(url, "the host or bucket name has characters no name has")
    if scheme == "file":
        if host not in ("", "localhost") or port is not None:
            raise InvalidLocation(url, "a file:// URL names no host")
        host = ""
    elif not host:
        raise InvalidLocation(url, "the URL names no host or bucket")
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    raw = parts.path
    if raw in ("", "/"):
        return Location(scheme, host, (), True)
    if not raw.startswith("/"):
        raise InvalidLocation(url, "the path must start with '/'")
    directory = raw.endswith("/")
    segments = tuple(_segment(url, s) for s in raw[1 : -1 if directory else None].split("/"))
    return Location(scheme, host, segments, directory)


def _segment(url: str, raw: str) -> str:
    if _BAD_ESCAPE.search(raw):
        raise InvalidLocation(url, "malformed percent-escape in the path")
    try:
        segment = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise InvalidLocation(url, "a percent-escape in the path is not UTF-8") from None
    if segment in ("", ".", ".."):
        raise InvalidLocation(url, "the path has an empty, '.' or '..' segment")
    if "/" in segment or "\\" in segment:
        raise InvalidLocation(url, "the path has an encoded '/' or a backslash")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in segment):
        raise InvalidLocation(url, "the path has a control character")
    return segment


def redact_url(url: object) -> str:
    """``url`` fit to show: no userinfo, and the query string (which may hold a
    signature) cut to ``?…``."""
    text = redact_credentials(str(url))
    head, sep, _ = text.partition("?")
    return f"{head}?…" if sep else text
