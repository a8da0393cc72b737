"""attnprobe's Lightning callbacks under DDP: a ``lightning.Trainer`` on two CPU processes
(gloo) gives, epoch by epoch, the attention columns and the rotation of a one-process run over
the same global batches, and its logger receives them."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._lightning_ddp_run import fit
from tests.test_callbacks import COLUMNS, EPOCHS

SCRIPT = Path(__file__).resolve().parent / "_lightning_ddp_run.py"
ROOT = SCRIPT.parents[1]


def launch(out: Path, *args: str) -> subprocess.Popen[str]:
    """``_lightning_ddp_run.py`` in its own session, so that a hung run's ranks can all be
    killed (rank 0 starts rank 1)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the DDP run did not finish in {timeout} s:\n{output[-3000:]}")
    return process.returncode, output


def logged(path: Path) -> list[dict[str, float]]:
    """The epoch rows of Lightning's ``metrics.csv`` (the CSVLogger of rank 0)."""
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("attnprobe/air")]
    return [{k: float(v) for k, v in r.items() if v != ""} for r in rows]


def test_ddp_on_two_cpu_processes_equals_one_process(tmp_path: Path) -> None:
    """Two ranks (``DDPStrategy(process_group_backend="gloo")``, per-rank batch 4, rank ``r``
    taking every 2nd sample of each global batch of 8 from ``r``) against one process with
    batch 8, the same model, data order, learning-rate schedule and frozen RollingQ anchor.

    What is made comparable: dropout is 0 (masks drawn for a batch of 8 cannot be the ones two
    ranks draw for 4 samples each); every shard has equal size, so DDP's mean over ranks of the
    per-rank mean losses' gradients is the gradient of the global batch's mean loss; the frozen
    anchor pass runs on each rank over its half of the data (its statistics are summed over
    ranks). What differs is only float rounding (batches of 4 vs 8, gradient all-reduce), hence
    1e-6.

    Compared: on both ranks, the attention columns of every epoch (`COLUMNS`, computed after
    ``Probe.sync`` summed the statistics over ranks) and the final rotation and its counter;
    the values rank 0's logger wrote (``metrics.csv``, float32); and that Lightning did not
    warn about epoch-level values logged without ``sync_dist``.
    """
    process = launch(tmp_path / "ddp", "--devices", "2", "--anchor", "frozen")
    try:
        one = fit(tmp_path / "one", 1, "frozen")  # while the two ranks run
    finally:
        code, output = finish(process, timeout=240)
    assert code == 0, output[-3000:]
    assert one["world"] == 1 and one["num_rotations"] == 1  # the check did rotate
    expected = one["rows"]
    assert len(expected) == EPOCHS
    assert expected[0]["share_audio"] != pytest.approx(expected[-1]["share_audio"], abs=1e-3)

    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    reference = torch.tensor(one["rotation"], dtype=torch.float64)
    for rank, got in enumerate(ranks):
        assert (got["rank"], got["world"]) == (rank, 2)
        assert [r["epoch"] for r in got["rows"]] == list(range(EPOCHS))
        for want, row in zip(expected, got["rows"], strict=True):
            for column in COLUMNS:
                assert row[column] == pytest.approx(want[column], abs=1e-6), (rank, column, row)
                assert row[column] == ranks[0]["rows"][row["epoch"]][column]  # the same bits
        assert got["num_rotations"] == 1
        rotation = torch.tensor(got["rotation"], dtype=torch.float64)
        torch.testing.assert_close(rotation, reference, atol=1e-6, rtol=0)
        assert rotation.tolist() == ranks[0]["rotation"]  # broadcast from rank 0

    rows = logged(tmp_path / "ddp" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    for want, row in zip(expected, rows, strict=True):
        for column in COLUMNS:
            assert row[f"attnprobe/{column}"] == pytest.approx(want[column], abs=1e-6), column
    assert not [w for w in ranks[0]["warnings"] if "sync_dist" in w], ranks[0]["warnings"]
