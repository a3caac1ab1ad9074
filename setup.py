"""Packages for setuptools (everything else is in pyproject.toml). conf/ stays at the repository's top, where Hydra
users expect it, and ships inside the package as es_repro.conf, so an installed es-repro finds its configs."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["es_repro", "es_repro.*"]) + ["es_repro.conf"],
      package_dir={"es_repro.conf": "conf"})
