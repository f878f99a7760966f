"""Print the config reference (every section, key, type, default and its comment) as markdown.

    python scripts/config_reference.py            # print
    python scripts/config_reference.py --write    # replace the reference section of README.md

The field comments in the config dataclasses are the documentation; a test checks that README.md is current.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

from training.config import RunConfig

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
_FIELD = re.compile(r"^\s+(\w+): ([^=#]+?)(?: = ([^#]+?))?\s*(?:#\s*(.*))?$")


def field_comments(cls: type) -> dict[str, tuple[str, str]]:
    """name -> (type as written, comment) from the class source."""
    found, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        match = _FIELD.match(line)
        if match:
            comment = match.group(4) or " ".join(above)
            found[match.group(1)] = (match.group(2).strip(), comment.strip())
        above = above + [line.strip().lstrip("#").strip()] if line.strip().startswith("#") else []
    return found


def reference() -> str:
    lines = []
    for section in dataclasses.fields(RunConfig):
        cls = section.default_factory
        comments = field_comments(cls)
        defaults = dataclasses.asdict(cls())
        lines += [f"**`{section.name}`**", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            type_text, comment = comments.get(f.name, (str(f.type), ""))
            default = defaults[f.name]
            shown = "null" if default is None else repr(default) if isinstance(default, str) else str(default)
            cells = (f"`{f.name}`", f"`{type_text}`", f"`{shown}`", comment)
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def readme_section() -> str:
    text = README.read_text()
    return text[text.index(START) + len(START) : text.index(END)].strip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    if args.write:
        text = README.read_text()
        head, tail = text[: text.index(START) + len(START)], text[text.index(END) :]
        README.write_text(f"{head}\n{reference()}{tail}")
    else:
        print(reference(), end="")


if __name__ == "__main__":
    main()
