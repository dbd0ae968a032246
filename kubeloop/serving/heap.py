"""Process-level memory settings for long-running servers."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Moves everything allocated so far (imports, the loaded model) out of the GC's reach.

    A serving process starts with ~300k long-lived objects (torch, kserve, fastapi); each
    full collection of the cyclic GC walks all of them (about 160 ms here), and request
    objects that outlive a few collections keep triggering full collections under load:
    pauses in p99 and a few percent of CPU. Frozen objects are never collected, which
    is what they are: they live as long as the process.
    """
    gc.collect()
    gc.freeze()
