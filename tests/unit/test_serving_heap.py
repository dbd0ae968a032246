"""freeze_startup_heap: a serving process's startup objects leave the cyclic GC's reach."""

from __future__ import annotations

import subprocess
import sys


def test_startup_objects_are_frozen_and_later_ones_are_not():
    code = """
import gc
from kubeloop.serving.heap import freeze_startup_heap
startup = [{"n": i} for i in range(5000)]
assert gc.get_freeze_count() == 0
freeze_startup_heap()
frozen = gc.get_freeze_count()
assert frozen >= 5000, frozen
assert not any(o is startup for o in gc.get_objects())  # frozen: not tracked for collection
later = [{"m": i} for i in range(10)]
assert any(o is later for o in gc.get_objects())
print("ok", frozen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
