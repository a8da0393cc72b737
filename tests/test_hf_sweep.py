"""Every multimodal and sequence-to-sequence architecture of the installed transformers, built
tiny from its config with random weights (`tests.hf_zoo`), probed with ``ap.auto_layout``: the
model's outputs are unchanged by the probe and every probed layer's masses equal the model's
own eager attention weights (`tests.hf_checks.sweep_one`, on sdpa then eager).

One test per architecture, enumerated from transformers' auto mappings at collection time: a
new transformers brings its new architectures in. An architecture the zoo cannot build tiny is
skipped with the zoo's reason; one listed in `tests.hf_checks.UNSUPPORTED` is expected to fail
(strictly: it fails once it passes). The last test checks that the generated page
``docs/reference/hf-architectures.md`` lists the architectures of this transformers.
"""

from __future__ import annotations

import collections
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests import hf_checks, hf_zoo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "scripts" / "hf_support_table.py"

ENTRIES = hf_zoo.families()
_REPEATED = {
    name for name, n in collections.Counter(e.model_type for e in ENTRIES).items() if n > 1
}


def _id(entry: hf_zoo.Entry) -> str:
    """The model type; with its mapping where the model type appears in several."""
    if entry.model_type not in _REPEATED:
        return entry.model_type
    task = entry.mapping.removeprefix("MODEL_FOR_").removesuffix("_MAPPING_NAMES").lower()
    return f"{entry.model_type}@{task}"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread during the test (restored after): the models are tiny, and the suite
    runs one worker per core (``-n 2``), where more threads each make the sweep several times
    slower and push models past their cap."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
@pytest.mark.usefixtures("one_thread")
def test_architecture(entry: hf_zoo.Entry) -> None:
    row = hf_checks.sweep_one(entry, hf_checks.BACKENDS, hf_checks.CAP, hf_checks.ATOL)
    assert not row.leftovers, f"the probe left registrations in transformers: {row.detail}"
    if row.status == "skipped":
        pytest.skip(f"not built tiny: {row.detail}")
    why = hf_checks.UNSUPPORTED.get(entry.model_type)
    if why is not None:
        if row.status == "exact":
            pytest.fail(
                f"{entry.model_type} is exact now ({row.detail}): remove it from UNSUPPORTED "
                "in tests/hf_checks.py and regenerate the table "
                "(python docs/scripts/hf_support_table.py)"
            )
        pytest.xfail(f"unsupported: {why} [{row.status}: {row.detail}]")
    assert row.status == "exact", f"{row.status}: {row.detail}"


def _script() -> ModuleType:
    """``docs/scripts/hf_support_table.py`` as a module (nothing runs at import)."""
    spec = importlib.util.spec_from_file_location("hf_support_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_table_is_fresh() -> None:
    """The page lists the model types of the installed transformers, and its not-supported
    rows are the `hf_checks.UNSUPPORTED` entries with their reasons (when it was generated with
    this transformers version; the per-architecture tests above check the statuses)."""
    script = _script()
    page = script.read_page(script.PAGE.read_text(encoding="utf-8"))
    if page.transformers != transformers.__version__:
        pytest.skip(
            f"{script.PAGE_PATH} was generated with transformers {page.transformers}, this "
            f"is {transformers.__version__}: regenerate it with python {script.SCRIPT}"
        )
    regenerate = f"regenerate it: python {script.SCRIPT}"
    listed = {row.model_type for row in page.rows}
    current = {e.model_type for e in ENTRIES}
    assert listed == current, (
        f"the table lacks {sorted(current - listed)} and has {sorted(listed - current)} "
        f"too many: {regenerate}"
    )
    unknown = set(hf_checks.UNSUPPORTED) - current
    assert not unknown, f"UNSUPPORTED (tests/hf_checks.py) names unknown model types {unknown}"
    unsupported = {
        row.model_type: row.why
        for row in page.rows
        if row.status in (script.NOT_SUPPORTED, script.PARTLY)
    }
    not_built = {row.model_type for row in page.rows if row.status == script.NOT_BUILT}
    expected = {
        name: script.cell(script.short(why))
        for name, why in hf_checks.UNSUPPORTED.items()
        if name not in not_built  # nothing to support where nothing was built
    }
    assert unsupported == expected, (
        f"the table's (partly) not-supported rows are not the UNSUPPORTED entries: {regenerate}"
    )
