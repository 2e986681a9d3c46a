"""Measuring maps: metrics (numpy), the evaluation steps, sanity checks."""
