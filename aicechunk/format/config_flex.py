"""The repository configuration of spec v2: a FlexBuffer inside the repo info file.

Spec v2 has no ``config.yaml``: Icechunk 2.x serializes the same configuration mapping
with serde's FlexBuffer encoder into the repo info file. The mapping is the one
``config.yaml`` holds, except for enum variants: YAML writes them as tags
(``!s3 {...}``, here ``Tagged``), a FlexBuffer as a map of one key (``{"s3": {...}}``) or,
for a variant without a value, as its name (``"any_array"``). Writing turns every
``Tagged`` into that map; reading has to know where enums stand (a map of one key is
otherwise indistinguishable from a struct of one field), so it follows Icechunk's
configuration schema to the few places that hold one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aicechunk.errors import FormatError
from aicechunk.format.config import Tagged, check_config
from aicechunk.format.flatbuf import Reader, guarded
from aicechunk.format.flexbuf import decode_flex, encode_flex
from aicechunk.format.header import FileType, decode_versioned

__all__ = ["V2_TOP_LEVEL_KEYS", "config_of_repo_info", "decode_config_flex", "encode_config_flex"]

#: the keys of Icechunk 2.x's RepositoryConfig; every one is written (null when unset),
#: as Icechunk writes them
V2_TOP_LEVEL_KEYS = (
    "inline_chunk_threshold_bytes",
    "get_partial_values_concurrency",
    "compression",
    "max_concurrent_requests",
    "max_concurrent_decodes",
    "caching",
    "storage",
    "virtual_chunk_containers",
    "manifest",
    "previous_file",
    "repo_update_retries",
    "num_updates_per_repo_info_file",
)

_CONFIG_FIELD = 9  # the RepoInfo table's `config` field (a byte vector)


# --- writing -----------------------------------------------------------------------------


def _flex_value(value: Any) -> Any:
    if isinstance(value, Tagged):
        if value.value is None:  # a variant without a value: its name
            return value.tag
        return {value.tag: _flex_value(value.value)}
    if isinstance(value, dict):
        return {key: _flex_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_flex_value(item) for item in value]
    return value


def encode_config_flex(config: dict[str, Any]) -> bytes:
    """The FlexBuffer of a configuration mapping (every top-level key of Icechunk 2.x
    present, null when unset); ``UnrepresentableValueError`` for a value that is not
    JSON."""
    doc = {key: config.get(key) for key in V2_TOP_LEVEL_KEYS}
    doc.update({k: v for k, v in config.items() if k not in doc})
    return encode_flex(_flex_value(doc), "configuration")


# --- reading -------------------------------------------------------------------------------

Variants = Callable[[str, Any, str], Any]


class _Schema:
    """Turns the enum variants at the places Icechunk's schema puts them into ``Tagged``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, where: str, problem: str) -> FormatError:
        return FormatError(self.name, f"configuration: {where}: {problem}")

    def enum(self, value: Any, where: str, variants: Variants | None = None) -> Any:
        """A variant without a value stays its name (as ``config.yaml`` reads it); one
        with a value, a map of one key, becomes ``Tagged``."""
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, dict) or len(value) != 1:
            raise self.fail(where, f"expected an enum variant, got {value!r:.80}")
        ((tag, inner),) = value.items()
        return Tagged(tag, inner if variants is None else variants(tag, inner, f"{where}.{tag}"))

    def conditions(self, value: Any, where: str, leaf: Variants | None = None) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list of conditions, got {value!r:.80}")
        return [self.enum(item, f"{where}[{i}]", leaf) for i, item in enumerate(value)]

    def preload(self, tag: str, value: Any, where: str) -> Any:
        if tag in ("or", "and"):
            return self.conditions(value, where, self.preload)
        if tag == "num_refs" and isinstance(value, dict):
            return {k: self.enum(v, f"{where}.{k}") for k, v in value.items()}
        return value

    def split(self, tag: str, value: Any, where: str) -> Any:
        if tag in ("or", "and"):
            return self.conditions(value, where, self.split)
        return value

    def split_sizes(self, value: Any, where: str) -> Any:
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {value!r:.80}")
        rules = []
        for i, rule in enumerate(value):
            at = f"{where}[{i}]"
            if not isinstance(rule, list) or len(rule) != 2 or not isinstance(rule[1], list):
                raise self.fail(at, f"expected [condition, [dimensions]], got {rule!r:.80}")
            dims = []
            for j, dim in enumerate(rule[1]):
                if not isinstance(dim, dict):
                    raise self.fail(f"{at}[1][{j}]", f"expected a mapping, got {dim!r:.80}")
                condition = self.enum(dim.get("condition"), f"{at}[1][{j}].condition")
                dims.append({**dim, "condition": condition})
            rules.append([self.enum(rule[0], f"{at}[0]", self.split), dims])
        return rules

    def config(self, doc: Any) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise self.fail("top level", f"expected a mapping, got {type(doc).__name__}")
        containers = doc.get("virtual_chunk_containers")
        if isinstance(containers, dict):
            for prefix, container in containers.items():
                if isinstance(container, dict) and "store" in container:
                    store = self.enum(container["store"], f"virtual_chunk_containers[{prefix!r}]")
                    if isinstance(store, str):  # a store without settings (in_memory)
                        store = Tagged(store, None)
                    container["store"] = store
        manifest = doc.get("manifest")
        if isinstance(manifest, dict):
            preload = manifest.get("preload")
            if isinstance(preload, dict) and "preload_if" in preload:
                where = "manifest.preload.preload_if"
                preload["preload_if"] = self.enum(preload["preload_if"], where, self.preload)
            splitting = manifest.get("splitting")
            if isinstance(splitting, dict) and "split_sizes" in splitting:
                where = "manifest.splitting.split_sizes"
                splitting["split_sizes"] = self.split_sizes(splitting["split_sizes"], where)
        try:
            return check_config(doc, self.name)
        except FormatError as err:
            raise FormatError(self.name, f"configuration: {err.problem}") from None


def decode_config_flex(data: bytes, name: str = "repo") -> dict[str, Any]:
    """The configuration mapping of a FlexBuffer stored in the repo info file ``name``;
    ``FormatError`` naming the file for malformed bytes or a configuration Icechunk could
    not read."""
    try:
        doc = decode_flex(data, name)
    except FormatError as err:
        raise FormatError(name, f"configuration: {err.problem}") from None
    return _Schema(name).config(doc)


def config_of_repo_info(
    data: bytes, name: str = "repo", max_size: int | None = None
) -> bytes | None:
    """The configuration FlexBuffer of a repo info file, read without decoding the rest
    (branches, snapshots and the operations log may be large); ``None`` when the file
    stores none. ``FormatError`` names the file, as ``decode_repo_info`` does."""
    version, payload = decode_versioned(data, FileType.REPO_INFO, name, max_size)
    if version < 2:
        raise FormatError(name, f"spec version {version} has no repo info file")

    def read() -> bytes | None:
        reader = Reader(payload, name)
        return reader.bytes_field(reader.root(), _CONFIG_FIELD)

    return guarded(name, read)
