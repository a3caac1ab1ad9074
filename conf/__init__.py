"""Hydra configs (conf/ at the repository top, shipped inside the package as es_repro.conf)."""
