"""Cluster launch helpers: SLURM job scripts rendered from the templates in examples/slurm."""
