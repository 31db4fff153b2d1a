"""Every install uses the pinned versions of constraints.txt, and they satisfy pyproject.toml.

A dependency's new release upstream must change nothing until `make lock` brings it in: a fresh
install once picked up a new major version of OpenCV whose Otsu threshold refuses float images,
and every picture upload answered 500.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO_ROOT / "constraints.txt"


def pinned() -> dict[str, Version]:
    """constraints.txt as {canonical name: exact version}; fails on any line that is not a pin."""
    pins: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        [specifier] = requirement.specifier
        assert specifier.operator == "==", f"not an exact pin: {line!r}"
        pins[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pins


def direct_requirements() -> list[Requirement]:
    """Every requirement pyproject.toml names, in the dependencies and in each extra."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if canonicalize_name(r.name) != "mnist-service"]


def test_every_requirement_is_pinned_to_a_version_it_allows() -> None:
    pins = pinned()
    for requirement in direct_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt (make lock)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, which pyproject.toml's "
            f"{requirement} does not allow (make lock)"
        )


def test_the_environment_under_test_is_the_pinned_one() -> None:
    pins = pinned()
    drifted = {}
    for requirement in direct_requirements():
        name = canonicalize_name(requirement.name)
        installed = Version(importlib.metadata.version(name))
        if installed != pins[name]:
            drifted[name] = f"{installed} installed, {pins[name]} pinned"
    assert not drifted, drifted


def test_every_install_goes_through_the_constraints() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    # the project's own installs: pip install of an extra ('.[serve]', './[train]', ...)
    installs = re.findall(r"pip install[^\n]*\[(?:serve|train|dev)\]", makefile + dockerfile)
    unlocked = [line for line in installs if "--constraint" not in line]
    # `make lock` alone resolves afresh: that is what it is for
    lock_recipe = re.search(r"^lock:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert lock_recipe is not None
    unlocked = [line for line in unlocked if line not in lock_recipe[1]]
    assert len(installs) >= 4 and not unlocked, unlocked
    assert "COPY pyproject.toml constraints.txt ./" in dockerfile


def test_the_peers_of_the_benchmark_run_the_same_onnxruntime() -> None:
    # bench/peers_bench.py compares servers, not onnxruntime releases
    ours = pinned()["onnxruntime"]
    for requirements in sorted((REPO_ROOT / "bench" / "peers").glob("requirements-*.txt")):
        pins = [Requirement(line) for line in requirements.read_text().splitlines()
                if line.strip() and not line.startswith("#")]  # fmt: skip
        [runtime] = [r for r in pins if canonicalize_name(r.name) == "onnxruntime"]
        assert str(runtime.specifier) == f"=={ours}", (requirements.name, str(runtime.specifier))
