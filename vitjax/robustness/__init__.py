"""Robustness of a trained run: gradient attacks (also used by adversarial training), common corruptions, label
shift and uncertainty, reported by ``--mode=robustness`` (report.py)."""
