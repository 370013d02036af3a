"""Package discovery: everything under agg2exp_lightning/, plus callbacks/ as agg2exp_lightning.callbacks."""
from setuptools import find_packages, setup

packages = find_packages(include=["agg2exp_lightning", "agg2exp_lightning.*"])
callbacks = ["agg2exp_lightning.callbacks" + name[len("callbacks"):] for name in find_packages(include=["callbacks", "callbacks.*"])]

setup(
    packages=packages + callbacks,
    package_dir={"agg2exp_lightning.callbacks": "callbacks"},
)
