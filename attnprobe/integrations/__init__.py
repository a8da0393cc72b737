"""attnprobe's training callbacks inside training frameworks (optional extras).

- `attnprobe.integrations.lightning`: callbacks for ``lightning.Trainer``
  (``pip install attnprobe[lightning]``).
- `attnprobe.integrations.transformers`: callbacks for ``transformers.Trainer``
  (``pip install attnprobe[hf]``).

Each module imports its framework; ``import attnprobe`` imports none of them.
"""
