"""Make data/python_stdlib_docs.jsonl: real English text that needs no download.

    python data/make_sample.py

One document per docstring of a public function or class in a fixed list of standard-library modules (the
Python Software Foundation's text, under the PSF licence), with metadata: module, kind (function or class)
and category (the module's area, five of them, so filters like "category == 'text'" select about a fifth).
The shipped file was made with CPython 3.11; another version gives slightly different text.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

AREAS = {
    "text": ["string", "textwrap", "difflib", "re", "unicodedata", "html", "csv"],
    "data": ["collections", "heapq", "bisect", "array", "json", "statistics", "decimal", "fractions"],
    "functional": ["itertools", "functools", "operator", "contextlib", "dataclasses", "enum"],
    "system": ["os", "shutil", "pathlib", "tempfile", "subprocess", "signal", "glob", "fnmatch"],
    "time": ["datetime", "calendar", "time", "zoneinfo", "sched", "threading", "queue"],
}


def documents():
    for category, modules in AREAS.items():
        for name in modules:
            module = importlib.import_module(name)
            for attr in sorted(dir(module)):
                if attr.startswith("_"):
                    continue
                obj = getattr(module, attr)
                if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                    continue
                if getattr(obj, "__module__", name) not in (name, f"_{name}", None) and not name == "os":
                    continue
                doc = inspect.getdoc(obj) or ""
                text = " ".join(doc.split())
                if 80 <= len(text) <= 1200:
                    yield {"text": f"{name}.{attr}: {text}", "module": name,
                           "kind": "class" if inspect.isclass(obj) else "function", "category": category}


if __name__ == "__main__":
    out = Path(__file__).with_name("python_stdlib_docs.jsonl")
    seen = set()
    rows = [d for d in documents() if not (d["text"] in seen or seen.add(d["text"]))]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} documents written to {out}")
