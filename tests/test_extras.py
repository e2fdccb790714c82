"""One install hint per optional extra: every extra it names exists in pyproject.toml, and no module
spells out its own ``pip install`` line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

from resel_deploy.extras import EXTRAS, install_hint

ROOT = Path(__file__).resolve().parents[1]


def test_every_hint_names_an_extra_of_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in EXTRAS:
        assert extra in declared, extra
        assert install_hint(extra).startswith(f"pip install 'resel[{extra}]'")
    with pytest.raises(KeyError, match="unknown extra 'nope'"):
        install_hint("nope")


def test_no_other_module_writes_its_own_install_line():
    offenders = []
    for folder in ("resel", "resel_train", "resel_deploy", "export", "cli"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "extras.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"pip install|resel\[", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders
