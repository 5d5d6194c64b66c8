"""Integer fields held as C long longs inside an object, where the extension is built.

The packet path moves counters and sequence state on every packet; held as int objects,
each move makes a new int and frees the old one, and each read follows a pointer to it.
``int_fields(name, *fields)`` gives a base class and the ``__slots__`` a subclass still
declares: with the extension the base holds the fields in C (``_fastpath.native_base``:
Python reads and writes them as ints, 0 until set; anything but an int that fits 64 bits
is refused with TypeError or OverflowError, and leaves the field -1, as CPython's member
setter does) and the subclass declares none of them; without it the base is ``object``
and the fields are ordinary slots. The C packet path finds either kind at configure
time.
"""

from __future__ import annotations

from typing import Any

_native_base: Any
try:
    from mediaserver.sfu._fastpath import native_base as _native_base
except ImportError:  # built without a C compiler
    _native_base = None


def int_fields(name: str, *fields: str) -> tuple[Any, tuple[str, ...]]:
    """(base class, slots left to declare) for a class whose ``fields`` are always ints."""
    if _native_base is None:
        return object, fields
    return _native_base(name, fields), ()
