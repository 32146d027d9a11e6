"""Evaluation: evaluators by type (registry.py; one module each: classification, fewshot, knn) listed in
`config.evals` and run in training and in `--mode=eval` (report.py), their metrics (jitted clu collections and
host-side numpy), and every plot."""
