"""Register-map tables in the README, generated from the profiles in config/profiles/.

``python -m devstack.profile_doc`` rewrites every block between
``<!-- profile:NAME -->`` and ``<!-- /profile:NAME -->`` in README.md; a test fails when
a block differs from its profile, so the README can never drift from the register map.
"""

from __future__ import annotations

import re
import sys

from derrick.plc.profile import PROFILE_DIR, Profile, Register, load_profile
from devstack.programs import REPO

README = REPO / "README.md"
BLOCK = re.compile(
    r"(<!-- profile:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /profile:(?P=name) -->)", re.S
)


def _encoding(reg: Register) -> str:
    parts = [str(reg.type)]
    if reg.length:
        parts.append(f"{reg.length} chars")
    if reg.word_order == "little":
        parts.append("low word first")
    if reg.byte_order == "little":
        parts.append("bytes swapped")
    return ", ".join(parts)


def _scaling(reg: Register) -> str:
    if reg.scale == 1 and reg.offset == 0:
        return ""
    return f"x {reg.scale:g}" + (f" {reg.offset:+g}" if reg.offset else "")


def table(profile: Profile) -> str:
    """The Markdown table of one profile, in table and address order."""
    order = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}
    rows = sorted(profile.registers, key=lambda r: (order[str(r.table)], r.address))
    lines = [
        "| tag | table | address | registers | type | scale | unit | description |",
        "| --- | --- | ---: | ---: | --- | --- | --- | --- |",
    ]
    lines += [
        f"| `{r.tag}` | {r.table} | {r.address} | {r.count} | {_encoding(r)} | "
        f"{_scaling(r)} | {r.unit} | {r.description.replace('|', '/')} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """README text with every profile block regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + table(load_profile(m.group("name"))) + m.group(4), text)


def main() -> int:
    text = README.read_text()
    names = {m.group("name") for m in BLOCK.finditer(text)}
    missing = sorted({p.stem for p in PROFILE_DIR.glob("*.yaml")} - names)
    README.write_text(render(text))
    if missing:
        sys.stderr.write(f"README has no block for profiles: {', '.join(missing)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
