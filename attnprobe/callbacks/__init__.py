"""attnprobe's diagnostics and RollingQ in any training loop, without a framework.

One small protocol, `Callback`: ``on_fit_start(model)``, ``on_epoch_start(epoch)``,
``on_batch_end(batch, loss)``, ``on_epoch_end(epoch, row) -> columns`` and ``on_fit_end()``, with
``state_dict`` / ``load_state_dict`` for checkpoints. `Callbacks` calls several in order and
merges the columns each returns at the end of an epoch into one row; used as a context manager
it detaches every probe when the loop ends, also after an exception. Built-in callbacks:

- `AttentionDiagnostics`: a probe on one attention layer during every training epoch; at the
  epoch's end the query group's share per modality, the AIR and the key gap
  (`attnprobe.metrics.attention_columns`) and the epoch's `attnprobe.History`.
- `RollingQCallback`: the RollingQ check at every epoch's end (Ni et al., ICML 2025,
  arXiv 2506.11465, Algorithm 1) on the statistics `AttentionDiagnostics` collected, with the
  anchor from those running statistics or from a frozen pass over the data.
- `CorruptionEvaluation`: accuracy and attention shares on an evaluation set, clean and with
  each input modality corrupted.
- `RunFiles`: the run's files (``metrics.csv``, ``attention.csv``, an atomic checkpoint,
  TensorBoard) and resuming from them; ``attnprobe report`` reads the folder.

`attnprobe.training.Trainer` is a short loop over these callbacks.

A plain loop (``docs/guides/training.md``, "With the callbacks")::

    diagnostics = AttentionDiagnostics("fusion", model.fusion_layout())
    with Callbacks(diagnostics, RollingQCallback(rollingq, diagnostics)).fit(model) as run:
        for epoch in range(epochs):
            run.epoch_start(epoch)
            for inputs, target in loader:
                loss = train_step(inputs, target)
                run.batch_end(loss)
            row = run.epoch_end(epoch)

The rotation and its counter are buffers of the model (`attnprobe.RollingQ`), so any
checkpoint of the model's ``state_dict`` restores them.
"""

from attnprobe.callbacks._core import (
    AttentionDiagnostics,
    Callback,
    Callbacks,
    RollingQCallback,
    numeric_columns,
    rollingq_columns,
)
from attnprobe.callbacks._evaluation import CorruptionEvaluation
from attnprobe.callbacks._files import ATTENTION, CHECKPOINT, METRICS, RunFiles, load_checkpoint

__all__ = [
    "ATTENTION",
    "CHECKPOINT",
    "METRICS",
    "AttentionDiagnostics",
    "Callback",
    "Callbacks",
    "CorruptionEvaluation",
    "RollingQCallback",
    "RunFiles",
    "load_checkpoint",
    "numeric_columns",
    "rollingq_columns",
]
