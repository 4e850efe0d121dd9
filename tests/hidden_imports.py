"""The source of an import hider for subprocess tests: prepended to a script, it makes the
named top-level packages impossible to import (and `importlib.util.find_spec` answer None for
them, as on a machine without them), so a test proves code runs where they are missing."""

HIDER = r'''
import importlib.abc, importlib.util, sys
HIDDEN = set({hidden!r})

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        frame = sys._getframe(1)
        while frame is not None:  # a probe (importlib.util.find_spec, as accelerate's) is answered below
            if frame.f_code.co_name == "find_spec" and "importlib.util" in frame.f_code.co_filename:
                return None
            frame = frame.f_back
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden)", name=name)

sys.meta_path.insert(0, Hide())
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name.split(".")[0] in HIDDEN else _find(name, *a, **k)
'''


def hiding(hidden: set[str], script: str) -> str:
    """`script`, run with the packages in `hidden` missing."""
    return HIDER.format(hidden=sorted(hidden)) + script
