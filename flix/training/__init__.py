"""T5X-style training: partitioning, train state, steps, checkpoints and the loop."""
