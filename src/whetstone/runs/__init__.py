"""Runs: a configuration made into a run, a saved run restored and measured, sweeps, the demo."""
