"""Cyclic garbage collection tuned for a long-running server (both processes use it).

A full collection walks every object that lives in the oldest generation: after start-up
that is the whole of Twisted, Klein, the endpoint's libraries and its model, so each one
stalls the reactor for milliseconds. ``gc.freeze()`` (Python 3.7+, Instagram's approach)
moves what exists once start-up is done into a permanent generation the collector skips:
the requests' own short-lived cycles are still collected as before. ``BIS_GC_FREEZE=0``
turns it off (for measuring one against the other).
"""

import gc
import os

FREEZE_VARIABLE = 'BIS_GC_FREEZE'


def freeze_startup_objects():
    """Collect once, then exempt every object alive now from future collections.
    Returns how many objects were frozen (0 when switched off)."""
    if os.environ.get(FREEZE_VARIABLE, '1').strip().lower() in ('0', 'no', 'false', 'off'):
        return 0
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
