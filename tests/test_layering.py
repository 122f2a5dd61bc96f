"""The layering contracts of pyproject.toml ([tool.importlinter], run by `make test`) cover every module."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SURFACES = {"artistid.cli", "artistid.serve", "artistid.spark"}


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def test_every_module_below_the_surfaces_is_held_to_the_layering() -> None:
    modules = {f"artistid.{p.stem}" for p in (ROOT / "src" / "artistid").glob("*.py") if p.stem != "__init__"}
    contract = _contracts()["nothing below the surfaces imports cli, serve or spark"]
    assert set(contract["forbidden_modules"]) == SURFACES
    assert set(contract["source_modules"]) == modules - SURFACES  # a new module is added to the contract
