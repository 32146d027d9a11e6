"""From a folder of class subfolders to a tuned, deployed model in one command (``python -m vitjax.workflow``):
split -> baseline -> select -> tune (Optuna) -> ensemble -> distil, calibrate, export -> report. Every stage calls
the project's own modes (the train loop, --mode=baseline, the eval mode's logits, the exporters); none copies them.

Nothing is imported here, so that ``python -m vitjax.workflow`` checks its flags before the heavy imports."""
