"""Coverage-guided fuzzing of every file decoder with atheris.

    python tests/fuzz/fuzz_decoders.py -runs=200000

Seeds are real files (ours, written here). Any exception other than FormatError is a bug.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from aicechunk.errors import FormatError
    from aicechunk.format.config import decode_config_yaml
    from aicechunk.format.header import FileType, encode_file
    from aicechunk.format.manifest import decode_manifest
    from aicechunk.format.refs import decode_ref
    from aicechunk.format.snapshot import decode_snapshot
    from aicechunk.format.transaction_log import decode_transaction_log

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
            decode_config_yaml(body, "fuzz")
    except FormatError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
