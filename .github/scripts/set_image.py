"""Set (or show) one `images:` entry of a kustomization.yaml, leaving the rest untouched.

    set_image.py FILE NAME NEW_NAME NEW_TAG   point image NAME at NEW_NAME:NEW_TAG
    set_image.py --show FILE NAME             print the entry's current newTag

The GitOps step of .github/workflows/ci.yml. `kustomize edit set image` would do
the same edit but rewrites the whole file, moving or dropping its comments
(kubernetes-sigs/kustomize#4481); the overlay's comments explain its choices, so
only the lines of the one entry change here. Standard library only: it runs on
the bare runner. Exits non-zero unless exactly one entry named NAME exists.
"""

import re
import sys
from pathlib import Path

KEY = re.compile(r"^(?P<indent>\s*)(?P<dash>-\s+)?(?P<key>[A-Za-z]+):\s*(?P<value>.*?)\s*$")
# Replaced as a set: a leftover digest would win over the new tag.
REFERENCE_KEYS = {"newName", "newTag", "digest"}


def _unquote(value: str) -> str:
    value = value.split(" #", 1)[0].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _is_filler(line: str) -> bool:
    return line.strip() == "" or line.lstrip().startswith("#")


def _items(lines: list[str]) -> list[tuple[int, int, str]]:
    """(first line, end line, key indent) of each item of the top-level `images:` list."""
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == "images:")
    except StopIteration:
        raise SystemExit("set_image: no top-level `images:` list") from None
    starts: list[tuple[int, str]] = []
    end = len(lines)
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if _is_filler(line):
            continue
        if not line[0].isspace() and not line.startswith("-"):
            end = i  # the next top-level key ends the list
            break
        match = KEY.match(line)
        if match and match["dash"]:
            starts.append((i, " " * (len(match["indent"]) + len(match["dash"]))))
    items = []
    for n, (first, indent) in enumerate(starts):
        last = starts[n + 1][0] if n + 1 < len(starts) else end
        while last > first + 1 and _is_filler(lines[last - 1]):
            last -= 1  # comments after an item belong to what follows it
        items.append((first, last, indent))
    return items


def _entry(lines: list[str], name: str) -> tuple[int, int, str]:
    found = [
        item
        for item in _items(lines)
        if any(
            (m := KEY.match(line)) and m["key"] == "name" and _unquote(m["value"]) == name
            for line in lines[item[0] : item[1]]
        )
    ]
    if len(found) != 1:
        raise SystemExit(f"set_image: {len(found)} `images:` entries named {name!r}, need 1")
    return found[0]


def show(path: Path, name: str) -> str:
    """The entry's current newTag ("" when it has none)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    first, end, _ = _entry(lines, name)
    for line in lines[first:end]:
        match = KEY.match(line)
        if match and match["key"] == "newTag":
            return _unquote(match["value"])
    return ""


def set_image(path: Path, name: str, new_name: str, new_tag: str) -> None:
    """Point the entry at new_name:new_tag; every other line stays as it was."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    first, end, indent = _entry(lines, name)
    body = [
        line
        for line in lines[first:end]
        if (m := KEY.match(line)) is None or m["dash"] or m["key"] not in REFERENCE_KEYS
    ]
    # Quoted: a tag of digits only (a short SHA can be one) must stay a string.
    body[1:1] = [f"{indent}newName: {new_name}", f'{indent}newTag: "{new_tag}"']
    lines[first:end] = body
    path.write_text("\n".join(lines) + ("\n" if text.endswith("\n") else ""), encoding="utf-8")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--show":
        print(show(Path(argv[1]), argv[2]))
        return 0
    if len(argv) != 4 or not all(argv):
        print(__doc__, file=sys.stderr)
        return 2
    path, name, new_name, new_tag = Path(argv[0]), argv[1], argv[2], argv[3]
    before = show(path, name)
    set_image(path, name, new_name, new_tag)
    print(f"{path}: {name} {before or '(no tag)'} -> {new_name}:{new_tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
