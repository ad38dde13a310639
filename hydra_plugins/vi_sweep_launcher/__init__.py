"""vi_sweep's batched Hydra launcher (``hydra/launcher=batched``); see ``vi_sweep_launcher.py``."""
