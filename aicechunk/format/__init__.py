"""The Icechunk on-disk format: bytes <-> objects for every file kind, and no I/O.

``Coords`` (a chunk's indices along each dimension) is the one type every file kind
shares; each module beside this one reads and writes one kind of file.
"""

#: A chunk's index along each dimension of its array's chunk grid.
Coords = tuple[int, ...]
