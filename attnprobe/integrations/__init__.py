"""attnprobe's training callbacks inside training frameworks (optional extras).

- `attnprobe.integrations.lightning`: callbacks for ``lightning.Trainer``
  (``pip install attnprobe[lightning]``).

Each module imports its framework; ``import attnprobe`` imports none of them.
"""
