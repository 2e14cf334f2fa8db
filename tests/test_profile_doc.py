"""The README's register-map tables are the profiles, not a copy that can drift."""

import pytest

from derrick.plc.profile import PROFILE_DIR
from devstack.profile_doc import BLOCK, README, render

PROFILES = sorted(path.stem for path in PROFILE_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", PROFILES)
def test_readme_table_matches_profile(name):
    text = README.read_text()
    blocks = {m.group("name"): m.group(0) for m in BLOCK.finditer(text)}
    assert name in blocks, f"README has no <!-- profile:{name} --> block"
    fresh = {m.group("name"): m.group(0) for m in BLOCK.finditer(render(text))}
    assert blocks[name] == fresh[name], (
        f"README's {name} table differs from config/profiles/{name}.yaml: "
        "run `python -m devstack.profile_doc`"
    )


def test_a_drifted_table_is_regenerated():
    drifted = README.read_text().replace(
        "| `hook_load` | holding | 0 |", "| `hook_load` | holding | 7 |"
    )
    assert "| `hook_load` | holding | 7 |" in drifted
    assert "| `hook_load` | holding | 0 |" in render(drifted)
