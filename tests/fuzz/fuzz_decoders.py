"""Coverage-guided fuzzing of every file decoder with atheris.

    python tests/fuzz/fuzz_decoders.py -runs=200000

Seeds are real files (ours, written here). Any exception other than FormatError is a bug.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from aicechunk.errors import FormatError
    from aicechunk.format.header import FileType, encode_file
    from aicechunk.format.manifest import decode_manifest
    from aicechunk.format.refs import decode_ref
    from aicechunk.format.snapshot import decode_snapshot
    from aicechunk.format.transaction_log import decode_transaction_log

with atheris.instrument_imports():
    from aicechunk.config import RepositoryConfig
    from aicechunk.errors import AicechunkError


def fuzz_config_yaml(body: bytes) -> None:
    """``config.yaml`` as a repository reads it: parsed, then every setting the library
    uses taken out (caches, inline threshold, virtual chunk containers) and written back.
    Any error but a library error (``FormatError`` naming the file) is a bug."""
    try:
        config = RepositoryConfig.from_yaml(body, "config.yaml")
        caching = config.caching
        if caching is not None:
            for name in caching.DEFAULTS:
                caching.resolved(name)
        config.inline_chunk_threshold_bytes  # noqa: B018
        config.virtual_chunk_containers  # noqa: B018
        RepositoryConfig.from_yaml(config.to_yaml(), "config.yaml")
    except AicechunkError as err:
        assert str(err).startswith("config.yaml: "), err


DECODERS = [decode_snapshot, decode_manifest, decode_transaction_log]
TYPES = [FileType.SNAPSHOT, FileType.MANIFEST, FileType.TRANSACTION_LOG]


def one_input(data: bytes) -> None:
    if not data:
        return
    which, body = data[0] % 5, data[1:]
    try:
        if which < 3:
            # fuzz the flatbuffer itself behind a valid header, where the structure lives
            manifest = DECODERS[which](encode_file(TYPES[which], body, level=1), "fuzz")
            if which == 1:
                for node_id in manifest.node_ids():
                    list(manifest.iter_node(node_id))
                    manifest.lookup(node_id, (0, 0))
        elif which == 3:
            decode_ref(body, "fuzz")
        else:
            fuzz_config_yaml(body)
    except FormatError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
