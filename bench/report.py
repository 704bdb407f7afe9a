"""Write a benchmark's markdown table into README.md between its markers.

Each benchmark owns a block ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->`` in README.md; the
block is replaced in place (or appended under '## Benchmarks' when missing), so README always shows
the figures of the last run, with the machine they were measured on.
"""

from __future__ import annotations

import os
import platform
import re
from datetime import date
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def machine() -> str:
    """One line naming the machine and date of the measurement."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {date.today().isoformat()}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def write_block(name: str, body: str, readme: Path = README, section: str | None = None) -> None:
    """Replace (or append) the README block of benchmark ``name`` with ``body``.

    A missing block goes at the end of the ``## <section>`` section when README has one, else under
    '## Benchmarks'.
    """
    text = readme.read_text() if readme.exists() else "# README\n"
    block = f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    heading = re.compile(rf"^## {re.escape(section)}[ \t]*$", re.M) if section else None
    found = heading.search(text) if heading else None
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    elif found:
        nxt = re.compile(r"^## ", re.M).search(text, found.end())
        end = nxt.start() if nxt else len(text)
        text = text[:end].rstrip() + "\n\n" + block + "\n" + ("\n" + text[end:] if nxt else "")
    else:
        if "\n## Benchmarks" not in text:
            text = text.rstrip() + "\n\n## Benchmarks\n"
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)
    print(body)
