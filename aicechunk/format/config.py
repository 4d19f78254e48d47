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

__all__ = ["TOP_LEVEL_KEYS", "Tagged", "decode_config_yaml", "encode_config_yaml"]

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


class _Loader(yaml.SafeLoader):
    pass


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    value: Any
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
        if isinstance(node, yaml.ScalarNode) and node.value == "" and node.style is None:
            value = None
    return Tagged(suffix, value)


_Loader.add_multi_constructor("!", _construct_tagged)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_tagged(dumper: yaml.SafeDumper, data: Tagged) -> yaml.Node:
    tag = "!" + data.tag
    if isinstance(data.value, dict):
        return dumper.represent_mapping(tag, data.value)
    if isinstance(data.value, list | tuple):
        return dumper.represent_sequence(tag, list(data.value))
    if data.value is None:
        return dumper.represent_scalar(tag, "")
    return dumper.represent_scalar(tag, str(data.value))


_Dumper.add_representer(Tagged, _represent_tagged)


def encode_config_yaml(config: dict[str, Any]) -> bytes:
    """YAML of a configuration mapping (every top-level key present, null when unset)."""
    doc = {key: config.get(key) for key in TOP_LEVEL_KEYS}
    doc.update({k: v for k, v in config.items() if k not in doc})
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
    if not isinstance(doc, dict):
        raise FormatError(name, f"expected a mapping at the top level, got {type(doc).__name__}")
    threshold = doc.get("inline_chunk_threshold_bytes")
    if threshold is not None and (not isinstance(threshold, int) or threshold < 0):
        raise FormatError(name, "inline_chunk_threshold_bytes: expected a non-negative integer")
    for key in ("caching", "storage", "manifest", "compression", "virtual_chunk_containers"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise FormatError(name, f"{key}: expected a mapping, got {type(doc[key]).__name__}")
    return doc
