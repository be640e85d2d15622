"""Forward hooks that only see their own thread's forward pass.

A capture registers hooks on a model that may be shared: the dashboard's sessions run one model
for every user, each upload's capture on its own thread. A module's hooks fire on every forward
through it, whichever thread registered them, so without this guard two concurrent captures each
record pieces of the other's activations (seen as a top neighbour's cosine of 0.996 instead of 1
in the eight-session browser test). `own_thread(hook)` runs `hook` only on forwards of the thread
that wrapped it; other threads' forwards pass through untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def own_thread(hook: Callable[..., Any]) -> Callable[..., Any]:
    """`hook`, run only when the forward pass is on the calling (capturing) thread."""
    owner = threading.get_ident()

    def run(*args: Any) -> Any:
        if threading.get_ident() == owner:
            return hook(*args)
        return None

    return run
