"""Run Python code with an import guard: a third-party module that the project's own code imports must
be on an allow-list, else the import fails. Writes the third-party top-level modules project code
imported (and any refused) as JSON. Imports made by third-party code itself (torch importing its
own dependencies) are left alone: the image that provides the package provides those too.

    python tests/import_guard.py --allow numpy,tokenizers --record out.json -c "CODE"
"""
from __future__ import annotations

import argparse
import importlib.abc
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORTLIB = str(Path(importlib.__file__).parent)      # import_module() and friends: not the importer
PROJECT = {"build", "training", "clients", "server", "contract", "tests", "__main__"}


def _importer() -> str | None:
    """The project package whose code asked for the import being resolved, or None."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(("<frozen", IMPORTLIB)) and name != __file__:
            try:
                part = Path(name).relative_to(ROOT).parts[0]
            except ValueError:
                return None
            return part if part in PROJECT else None
        frame = frame.f_back
    return None


class Guard(importlib.abc.MetaPathFinder):
    def __init__(self, allowed: set[str]):
        self.allowed, self.imported, self.refused = allowed, set(), set()

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in PROJECT or _importer() is None:
            return None
        if top not in self.allowed:
            self.refused.add(top)
            raise ImportError(f"import guard: {top!r} is not installed where this code runs")
        self.imported.add(top)
        return None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--allow", default="")
    p.add_argument("--record", type=Path, required=True)
    p.add_argument("-c", dest="code", required=True)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    guard = Guard({a for a in args.allow.split(",") if a})
    sys.meta_path.insert(0, guard)
    try:
        exec(compile(args.code, "<guarded>", "exec"), {"__name__": "__guarded__"})
    finally:
        args.record.write_text(json.dumps({"imported": sorted(guard.imported), "refused": sorted(guard.refused)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
