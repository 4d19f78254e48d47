"""Sessions: the ``Session``/``ForkSession`` facade and the parts it is made of.

``state`` (what a session is), ``reads`` (nodes, chunks, status), ``flush`` (changes to
files), ``commit`` (commit and rebase), ``amend`` (replacing a branch's tip, spec v2),
``rearrange`` (moves, spec v2), ``saving`` (the commit calls of ``Session``) and
``payload`` (forks as bytes).
"""

from aicechunk.session.reads import ChunkType, Diff, NodeView
from aicechunk.session.session import ForkSession, Session
from aicechunk.session.state import SessionConfig, SessionMode

__all__ = [
    "ChunkType",
    "Diff",
    "ForkSession",
    "NodeView",
    "Session",
    "SessionConfig",
    "SessionMode",
]
