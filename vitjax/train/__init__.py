"""Training: the loop's recipe (loop.py, imported by main.py alone), its train state, steps, objectives,
optimizer and periodic hooks."""

# Importing these registers their objectives: robust training (adversarial), domain adaptation, self-supervision.
from vitjax.train import adaptation, adversarial, masked, selfsupervised  # noqa: F401
