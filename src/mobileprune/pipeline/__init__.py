"""Composition: training loops and the pruning pipelines (ADMM, proximal) with resume."""
