"""Evaluate stage: `reviewgen evaluate` report, metrics and plots."""
