"""Tiny offline models and everything around them: random-weight tiny pipelines, the trained demo,
synthetic training data and chunk sources, the training script and continuity metrics."""
