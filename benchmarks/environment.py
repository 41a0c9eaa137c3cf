"""Environment variables set for a benchmark section only (caches of its own, switches), then put back."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional


@contextlib.contextmanager
def environment(**values: Optional[str]) -> Iterator[None]:
    """Inside the block, os.environ has these variables set (None: unset); afterwards, as before."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = str(value)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
