"""Structural channel pruning with torch-pruning (DepGraph) and channel rounding."""
