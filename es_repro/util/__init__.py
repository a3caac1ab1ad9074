"""Leaf utilities every package may import, importing nothing else of es_repro: user errors (errors.py), atomic
files (files.py), per-phase timers (timing.py), and the process group a run's population is sharded over
(distributed.py)."""
