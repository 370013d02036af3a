"""Packaging in pyproject.toml alone: every package listed, the configs shipped, dependency floors that hold."""
from __future__ import annotations

import inspect
import sys
from importlib import metadata
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

#: package -> (first version with an API the code uses, the API, where the version is documented).
API_FLOORS = {
    "lightning": ("2.6.0", "Trainer.fit/validate/test/predict(weights_only=...)", "Lightning CHANGELOG 2.6.0, #21072"),
    "monai": ("1.5.0", "SwinUNETR(...) without img_size", "required positional argument up to MONAI 1.4"),
    "torch": ("2.1.0", "torch.load(..., mmap=True, weights_only=True)", "PyTorch 2.1 release notes"),
    "jsonargparse": ("4.27.7", "LightningCLI's own requirement", "lightning/pytorch/cli.py RequirementCache"),
}


def _floors() -> dict[str, Version]:
    out = {}
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        lower = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        if lower:
            out[req.name.lower()] = max(lower)
    return out


def test_no_setup_py_and_every_package_listed():
    assert not (REPO / "setup.py").exists()
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {"agg2exp_lightning." + ".".join(p.parent.relative_to(REPO / "agg2exp_lightning").parts)
               for p in (REPO / "agg2exp_lightning").rglob("__init__.py")}
    on_disk = {name.rstrip(".") for name in on_disk}
    on_disk |= {"agg2exp_lightning.callbacks" + "".join("." + part for part in p.parent.relative_to(REPO / "callbacks").parts)
                for p in (REPO / "callbacks").rglob("__init__.py")}
    assert on_disk - listed == set(), "packages missing from [tool.setuptools] packages in pyproject.toml"
    assert setuptools["package-dir"] == {"agg2exp_lightning.callbacks": "callbacks"}
    assert "agg2exp_lightning.configs" in listed
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["agg2exp_lightning.configs"] == ["*.yaml"]


def test_shipped_configs_and_callbacks_import_from_the_package():
    import agg2exp_lightning.callbacks as callbacks
    from agg2exp_lightning.training import named_configs

    assert Path(callbacks.__file__).resolve().parent == (REPO / "callbacks").resolve()
    configs = named_configs()
    assert {"demo", "paper"} <= set(configs)
    assert all(p.is_file() and p.parent.name == "configs" and p.parent.parent.name == "agg2exp_lightning"
               for p in configs.values())
    assert (REPO / "configs" / "demo.yaml").resolve() == configs["demo"].resolve()  # the Makefile and docs path


@pytest.mark.parametrize("package", sorted(API_FLOORS))
def test_dependency_floor_covers_the_apis_used_and_is_installed(package):
    needed, api, source = API_FLOORS[package]
    floor = _floors()[package]
    assert floor >= Version(needed), f"pyproject.toml allows {package}>={floor}, but the code uses {api} ({source})"
    installed = Version(metadata.version(package).split("+")[0])
    assert installed >= floor, f"installed {package} {installed} is below the floor {floor}"


def test_the_apis_behind_the_floors_exist():
    import torch
    from lightning.pytorch import Trainer

    for method in ("fit", "validate", "test", "predict"):
        assert "weights_only" in inspect.signature(getattr(Trainer, method)).parameters, method
    assert "mmap" in inspect.signature(torch.load).parameters
    from monai.networks.nets import SwinUNETR

    assert "img_size" not in inspect.signature(SwinUNETR.__init__).parameters
