"""``config.yaml``: the repository configuration in the serde-YAML form Icechunk writes.

Enum variants appear as YAML tags (``store: !s3_compatible {...}``,
``!local_file_system /path``). Values are kept as plain Python data, tags as ``Tagged``,
so a file written by Icechunk survives a load and save here unchanged in meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from aicechunk.errors import FormatError

__all__ = [
    "MAX_NESTING",
    "STORE_KINDS",
    "TOP_LEVEL_KEYS",
    "Tagged",
    "check_config",
    "decode_config_yaml",
    "encode_config_yaml",
]

#: the keys of Icechunk 1.x's RepositoryConfig, written (null when unset) in this order
TOP_LEVEL_KEYS = (
    "inline_chunk_threshold_bytes",
    "get_partial_values_concurrency",
    "compression",
    "max_concurrent_requests",
    "caching",
    "storage",
    "virtual_chunk_containers",
    "manifest",
)


@dataclass(frozen=True)
class Tagged:
    """A YAML-tagged value: an externally tagged enum variant (``!tag value``)."""

    tag: str
    value: Any


#: Deepest nesting of YAML collections accepted (Icechunk's configs nest four levels).
MAX_NESTING = 64

#: Icechunk's object store kinds, the YAML tags of a virtual chunk container's ``store``.
STORE_KINDS = frozenset(
    ("in_memory", "local_file_system", "http", "s3_compatible", "s3", "gcs", "azure", "tigris")
)

#: ``caching`` counts, non-negative integers when set.
CACHING_KEYS = (
    "num_snapshot_nodes",
    "num_chunk_refs",
    "num_transaction_changes",
    "num_bytes_attributes",
    "num_bytes_chunks",
)


class _Loader(yaml.SafeLoader):
    """The safe loader, with Icechunk's tags kept and nesting bounded (composing and
    constructing recurse once per level)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.YAMLError(f"nested deeper than {MAX_NESTING} levels {mark}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    value: Any
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.ScalarNode) and node.style is None:
        # a plain scalar keeps its implicit type: `!Axis 0` is the integer 0, as serde reads it
        implicit = loader.resolve(yaml.ScalarNode, node.value, (True, False))  # type: ignore[no-untyped-call]
        value = loader.construct_object(yaml.ScalarNode(implicit, node.value))
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return Tagged(suffix, value)


_Loader.add_multi_constructor("!", _construct_tagged)


_PLAIN = "plain"  # our marker: write this tagged scalar unquoted


class _Dumper(yaml.SafeDumper):
    """Writes tagged scalars as Icechunk (serde) writes them: ``!Axis 0`` and
    ``!DimensionName time`` unquoted, so that numbers stay numbers. (PyYAML quotes every
    explicitly tagged scalar, and serde then reads ``!Axis '0'`` as a string.)"""

    def choose_scalar_style(self) -> str:
        event = self.event
        if isinstance(event, yaml.ScalarEvent) and event.style == _PLAIN:
            if self.analysis is None:
                self.analysis = self.analyze_scalar(event.value)
            plain = (
                self.analysis.allow_flow_plain
                if self.flow_level
                else (self.analysis.allow_block_plain)
            )
            return "" if plain and not self.analysis.empty else "'"
        return str(super().choose_scalar_style())


def _represent_tagged(dumper: yaml.SafeDumper, data: Tagged) -> yaml.Node:
    tag = "!" + data.tag
    value = data.value
    if isinstance(value, dict):
        return dumper.represent_mapping(tag, value)
    if isinstance(value, list | tuple):
        return dumper.represent_sequence(tag, list(value))
    if value is None:
        return dumper.represent_scalar(tag, "")
    if isinstance(value, bool | int | float):
        text = dumper.represent_data(value).value  # YAML's spelling: true, 1.5, 7
        return dumper.represent_scalar(tag, text, style=_PLAIN)
    text = str(value)
    # a string stays plain only where reading it back gives a string again
    as_read = dumper.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    style = _PLAIN if as_read == "tag:yaml.org,2002:str" else None
    return dumper.represent_scalar(tag, text, style=style)


_Dumper.add_representer(Tagged, _represent_tagged)


def encode_config_yaml(config: dict[str, Any]) -> bytes:
    """YAML of a configuration mapping (every top-level key present, null when unset).

    Keys this module does not know (a newer Icechunk's) keep their place after the known
    key they followed, so a file Icechunk wrote is saved back byte for byte."""
    following: dict[str | None, list[str]] = {}
    known: str | None = None
    for key in config:
        if key in TOP_LEVEL_KEYS:
            known = key
        else:
            following.setdefault(known, []).append(key)
    doc = {key: config[key] for key in following.get(None, ())}
    for known in TOP_LEVEL_KEYS:
        doc[known] = config.get(known)
        doc.update((key, config[key]) for key in following.get(known, ()))
    text: str = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    return text.encode()


def decode_config_yaml(data: bytes, name: str = "config.yaml") -> dict[str, Any]:
    """The configuration mapping of a ``config.yaml``."""
    try:
        doc = yaml.load(data, Loader=_Loader)
    except yaml.YAMLError as err:
        raise FormatError(name, f"not valid YAML: {err}") from None
    if doc is None:
        return {}
    return check_config(doc, name)


def check_config(doc: Any, name: str) -> dict[str, Any]:
    """``doc`` if it is a configuration mapping Icechunk would read (sections are
    mappings, counts non-negative integers, virtual chunk containers well formed);
    ``FormatError`` naming ``name`` and the field otherwise."""
    if not isinstance(doc, dict):
        raise FormatError(name, f"expected a mapping at the top level, got {type(doc).__name__}")
    for key in ("caching", "storage", "manifest", "compression", "virtual_chunk_containers"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise FormatError(name, f"{key}: expected a mapping, got {type(doc[key]).__name__}")
    counts = [f"caching.{key}" for key in CACHING_KEYS]
    for field in (
        "inline_chunk_threshold_bytes",
        "get_partial_values_concurrency",
        "max_concurrent_requests",
        "compression.level",
        *counts,
    ):
        _check_count(name, doc, field)
    containers = doc.get("virtual_chunk_containers") or {}
    for prefix, container in containers.items():
        _check_container(name, prefix, container)
    return doc


def _check_count(name: str, doc: dict[str, Any], field: str) -> None:
    section, _, key = field.rpartition(".")
    value = (doc.get(section) or {}).get(key) if section else doc.get(key)
    if value is not None and (type(value) is not int or value < 0):
        raise FormatError(name, f"{field}: expected a non-negative integer, got {value!r}")


def _check_container(name: str, prefix: Any, container: Any) -> None:
    where = f"virtual_chunk_containers[{prefix!r}]"
    if not isinstance(container, dict):
        raise FormatError(name, f"{where}: expected a mapping, got {type(container).__name__}")
    url_prefix = container.get("url_prefix")
    if not isinstance(url_prefix, str):
        raise FormatError(name, f"{where}.url_prefix: expected a URL string, got {url_prefix!r}")
    store = container.get("store")
    if not isinstance(store, Tagged) or store.tag not in STORE_KINDS:
        raise FormatError(
            name,
            f"{where}.store: expected a tagged object store "
            f"({', '.join('!' + k for k in sorted(STORE_KINDS))}), got {store!r}",
        )
    if container.get("name") is not None and not isinstance(container["name"], str):
        raise FormatError(name, f"{where}.name: expected a string or null")
