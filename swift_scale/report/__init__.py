"""Plots and the markdown report of a run folder."""
