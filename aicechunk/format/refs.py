"""Ref files: branches and tags (``{"snapshot":"<id>"}``), and tag tombstones.

Layout: ``refs/branch.<name>/ref.json``, ``refs/tag.<name>/ref.json`` and, for a deleted
tag, an empty ``refs/tag.<name>/ref.json.deleted`` beside it (the tag's file stays, so the
name can never be reused).
"""

from __future__ import annotations

import json
import unicodedata

from aicechunk.errors import FormatError, InvalidIdError, InvalidRefNameError
from aicechunk.format.ids import SnapshotId
from aicechunk.format.jsondoc import parse_json

__all__ = [
    "TOMBSTONE_CONTENT",
    "branch_key",
    "decode_ref",
    "encode_ref",
    "parse_ref_key",
    "tag_key",
    "tag_tombstone_key",
    "validate_new_ref_name",
    "validate_ref_name",
]

REF_FILE = "ref.json"
TOMBSTONE_FILE = "ref.json.deleted"
TOMBSTONE_CONTENT = b""
#: A ref's folder (``branch.<name>``) is one path segment, and local file systems refuse
#: segments over 255 bytes: names are at most 255 - len("branch.") bytes of UTF-8, branches
#: and tags alike. (Icechunk writes ref folders percent-encoded on local storage; fitting
#: that longer form is the local driver's check.)
MAX_NAME_BYTES = 255 - len("branch.")

#: Bidirectional formatting characters: they make one name display as another.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f"  # ALM, LRM, RLM
    "\u202a\u202b\u202c\u202d\u202e"  # LRE, RLE, PDF, LRO, RLO
    "\u2066\u2067\u2068\u2069"  # LRI, RLI, FSI, PDI
)

#: Characters that show as nothing, or as something else: controls (Cc), format
#: characters (Cf), line and paragraph separators (Zl, Zp).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def validate_ref_name(name: str, spec_version: int = 1) -> str:
    """Check a branch or tag name: non-empty, no ``/``, nothing unsafe as a storage key.

    In spec v2 a name is never a storage key (refs live in the repo info file), and
    Icechunk 2.x takes any string there (``feature/x``, ``..``): only the type is checked,
    so every ref another tool made stays reachable by its exact name."""
    if spec_version >= 2:
        if not isinstance(name, str):
            raise InvalidRefNameError(f"ref name {name!r}: must be a string")
        return name
    if not isinstance(name, str) or not name:
        raise InvalidRefNameError(f"ref name {name!r}: must be a non-empty string")
    if "/" in name:
        raise InvalidRefNameError(f"ref name {name!r}: must not contain '/'")
    if "\\" in name:
        raise InvalidRefNameError(f"ref name {name!r}: must not contain a backslash")
    if name in (".", ".."):
        raise InvalidRefNameError(f"ref name {name!r}: '.' and '..' are not names")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidRefNameError(f"ref name {name!r}: must not contain control characters")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRefNameError(f"ref name {name!r}: must be valid Unicode") from None
    if size > MAX_NAME_BYTES:
        raise InvalidRefNameError(
            f"ref name {name[:20]!r}...: {size} bytes of UTF-8, at most {MAX_NAME_BYTES} fit "
            "a storage path segment"
        )
    return name


def validate_new_ref_name(name: str, spec_version: int = 1) -> str:
    """Check the name of a branch or tag to create: ``validate_ref_name``, and no two names
    that look alike or hide characters. Refused: control and format characters (Unicode
    categories Cc, Cf: C1 controls such as the terminal escape U+009B, zero-width spaces,
    soft hyphens, byte order marks, bidirectional controls), line and paragraph separators
    (Zl, Zp), whitespace other than U+0020, leading or trailing spaces, and names that
    Unicode compatibility normalization (NFKC) changes (fullwidth
    ``\uff4d\uff41\uff49\uff4e``, ligatures, NFD spellings): one spelling per name.

    Not caught: letters of other scripts that look like Latin ones (Cyrillic ``\u0430`` in
    ``m\u0430in``); telling those apart needs Unicode's confusables table, which this library
    does not carry. Existing refs (made by other tools) stay reachable by their exact
    name: only creation is checked here.

    In spec v2 (names are no storage keys) ``/`` is allowed, as Icechunk 2.x allows it
    (``feature/x``); every other rule stands, and the name must not be empty, ``.`` or
    ``..``."""
    validate_ref_name(name.replace("/", "-") if spec_version >= 2 else name)
    if spec_version >= 2 and any(part in ("", ".", "..") for part in name.split("/")):
        raise InvalidRefNameError(f"ref name {name!r}: no empty, '.' or '..' parts around '/'")
    if unicodedata.normalize("NFC", name) != name:
        raise InvalidRefNameError(
            f"ref name {name!r}: not in Unicode normal form NFC; "
            f"use {unicodedata.normalize('NFC', name)!r}"
        )
    bidi = sorted({f"U+{ord(c):04X}" for c in name if c in BIDI_CONTROLS})
    if bidi:
        raise InvalidRefNameError(
            f"ref name {name!r}: must not contain bidirectional formatting characters "
            f"({', '.join(bidi)})"
        )
    hidden = sorted(
        {
            f"U+{ord(c):04X}"
            for c in name
            if unicodedata.category(c) in _HIDDEN_CATEGORIES
            or (c.isspace() and c != " ")
            or (unicodedata.category(c) == "Zs" and c != " ")
        }
    )
    if hidden:
        raise InvalidRefNameError(
            f"ref name {name!r}: must not contain control, format, separator or "
            f"whitespace characters other than a space ({', '.join(hidden)})"
        )
    if name != name.strip(" "):
        raise InvalidRefNameError(f"ref name {name!r}: must not start or end with a space")
    compatible = unicodedata.normalize("NFKC", name)
    if compatible != name:
        raise InvalidRefNameError(
            f"ref name {name!r}: has compatibility characters that look like others "
            f"(Unicode NFKC changes it to {compatible!r}); use {compatible!r}"
        )
    return name


def branch_key(name: str) -> str:
    """Storage key of a branch's ref file."""
    return f"refs/branch.{validate_ref_name(name)}/{REF_FILE}"


def tag_key(name: str) -> str:
    """Storage key of a tag's ref file."""
    return f"refs/tag.{validate_ref_name(name)}/{REF_FILE}"


def tag_tombstone_key(name: str) -> str:
    """Storage key of a deleted tag's tombstone."""
    return f"refs/tag.{validate_ref_name(name)}/{TOMBSTONE_FILE}"


def parse_ref_key(key: str) -> tuple[str, str] | None:
    """``("branch"|"tag"|"tag_tombstone", name)`` for a key under ``refs/``, else None."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "refs":
        return None
    folder, leaf = parts[1], parts[2]
    for prefix, kind in (("branch.", "branch"), ("tag.", "tag")):
        if folder.startswith(prefix) and len(folder) > len(prefix):
            name = folder[len(prefix) :]
            if leaf == REF_FILE:
                return kind, name
            if leaf == TOMBSTONE_FILE and kind == "tag":
                return "tag_tombstone", name
    return None


def encode_ref(snapshot_id: str) -> bytes:
    """The ref file's bytes."""
    return json.dumps({"snapshot": str(snapshot_id)}, separators=(",", ":")).encode()


def decode_ref(data: bytes, name: str = "<ref>") -> SnapshotId:
    """The snapshot id a ref file points to; ``FormatError`` naming the file otherwise.

    Parsed as Icechunk parses it: strict JSON (no duplicate keys, byte order mark or
    ``NaN``), other keys ignored, the id in Crockford base32 with its aliases (lower case,
    ``O`` for ``0``, ``I``/``L`` for ``1``) accepted."""
    try:
        doc = parse_json(data, strict=True)
    except ValueError as err:  # UnicodeDecodeError included
        raise FormatError(name, f"ref file is not valid JSON: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("snapshot"), str):
        raise FormatError(name, 'ref file must be {"snapshot": "<id>"}')
    snapshot: str = doc["snapshot"]
    if len(snapshot) != 20:
        raise FormatError(name, f"snapshot id {snapshot!r} is not 20 base32 characters")
    try:
        return SnapshotId.from_str(snapshot)
    except InvalidIdError as err:
        raise FormatError(name, f"ref file holds no snapshot id: {err}") from None
