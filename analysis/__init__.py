"""Analysis of vi_sweep results: pure numpy/pandas/matplotlib, never Hydra."""
