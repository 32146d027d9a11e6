"""Training: the loop's recipe (loop.py, imported by main.py alone), its train state, steps, objectives,
optimizer and periodic hooks."""
