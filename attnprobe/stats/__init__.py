"""Statistics: what a probe accumulates at each attention call site, and how.

- The contract (`Statistic`, `State`, `Dims`): each statistic declares its states — shape and
  merge rule — computes their update from one captured call (`Call`), and derives values
  from them. Probes, results, merging, saving and DDP sync loop over the declared states.
- The built-in statistics: `Mass` (always kept), `KeyMoments`, `QueryMoments`, `Cosines`,
  `Entropy`, `KeySample`, `SampleMass`, `SampleMeans`, `Maps`.
- The streaming accumulators underneath: `SumAccumulator` (float64 sums, DDP sync),
  `Reservoir` (a seeded uniform sample), `SiteAccumulator` (one call site's states).

Concepts: ``docs/concepts/statistics.md``.
"""

from attnprobe.stats import _builtin
from attnprobe.stats._accumulate import Reservoir, SumAccumulator, merge_samples
from attnprobe.stats._builtin import *  # noqa: F403  (the built-in statistics, _builtin.__all__)
from attnprobe.stats._call import Call
from attnprobe.stats._contract import (
    Dims,
    Reduce,
    State,
    States,
    Statistic,
    merge_states,
    ratio,
    statistic_class,
)
from attnprobe.stats._site import SiteAccumulator

__all__ = [
    "Call",
    "Dims",
    "Reduce",
    "Reservoir",
    "SiteAccumulator",
    "State",
    "States",
    "Statistic",
    "SumAccumulator",
    "merge_samples",
    "merge_states",
    "ratio",
    "statistic_class",
    *_builtin.__all__,
]
