"""Write ``docs/reference/hf-architectures.md``: which HuggingFace architectures attnprobe
supports, checked one by one on the installed transformers.

Run from the repository root: ``python docs/scripts/hf_support_table.py`` (CPU, a few
minutes). Every architecture of transformers' multimodal and sequence-to-sequence auto mappings
(`tests.hf_zoo.families`) is built tiny from its config with random weights (nothing is
downloaded) and checked by `tests.hf_checks.sweep_one` on sdpa and eager, the checks
``tests/test_hf_sweep.py`` runs; the page gives the versions, the counts and one table per
mapping. ``--out`` writes the page elsewhere.

`read_page` reads a generated page back (versions and rows): the freshness test of
``tests/test_hf_sweep.py`` compares it with the installed transformers.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as `python docs/scripts/hf_support_table.py`
    sys.path.insert(0, str(ROOT))

from tests import hf_checks, hf_zoo  # noqa: E402

PAGE_PATH = "docs/reference/hf-architectures.md"
SCRIPT = "docs/scripts/hf_support_table.py"
PAGE = ROOT / PAGE_PATH

SUPPORTED = "supported"
PARTLY = "partly supported"
NOT_SUPPORTED = "not supported"
NOT_BUILT = "not built tiny"

TITLES = {
    "IMAGE_TEXT_TO_TEXT": "Image-text-to-text",
    "VISION_2_SEQ": "Vision-to-sequence",
    "VIDEO_TEXT_TO_TEXT": "Video-text-to-text",
    "AUDIO_TEXT_TO_TEXT": "Audio-text-to-text",
    "MULTIMODAL_LM": "Multimodal language models",
    "ANY_TO_ANY": "Any-to-any",
    "SEQ_TO_SEQ_CAUSAL_LM": "Text sequence-to-sequence",
    "SPEECH_SEQ_2_SEQ": "Speech sequence-to-sequence",
}
"""Section titles of the mappings (without en dashes: heading anchors stay plain)."""


class PageRow(NamedTuple):
    """One row of the page's tables; ``why`` as written in the page (Markdown-escaped)."""

    mapping: str
    model_type: str
    kind: str
    status: str
    why: str


class Page(NamedTuple):
    transformers: str
    torch: str
    rows: list[PageRow]


# -- writing --------------------------------------------------------------------------------------
_ESCAPED = re.compile(r"([\\`*_{}\[\]|])")


def cell(text: str) -> str:
    """``text`` on one line of a Markdown table cell, shown as written (nothing in it becomes
    a link, emphasis, code, HTML or a column)."""
    text = " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;")
    return _ESCAPED.sub(r"\\\1", text)


WHY_LENGTH = 160
"""Characters of a reason the page shows (the test's output has all of it)."""


def short(why: str) -> str:
    """``why`` cut to `WHY_LENGTH` characters at a word boundary."""
    why = " ".join(why.split())
    if len(why) <= WHY_LENGTH:
        return why
    return why[:WHY_LENGTH].rsplit(" ", 1)[0] + " …"


def status_of(row: hf_checks.Row) -> tuple[str, str]:
    """(status, why) of one sweep row: supported (exact on every backend: the layers probed),
    partly supported (the probed layers exact, some attention layers left out) or not
    supported (the `hf_checks.UNSUPPORTED` reason, else the failure), or not built tiny (the
    zoo's reason)."""
    if row.status == "skipped":
        return NOT_BUILT, row.detail
    if row.status == "exact" and not row.leftovers:
        probed = f"{row.layers} layer{'s' * (row.layers != 1)} probed"
        if row.outside:
            probed += f" (+ {row.outside} of its media side)"
        caveat = hf_checks.CAVEATS.get(row.model_type)
        return SUPPORTED, probed if caveat is None else f"{probed}; {caveat}"
    why = hf_checks.UNSUPPORTED.get(row.model_type)
    status = PARTLY if row.status == "partial" and not row.leftovers else NOT_SUPPORTED
    return status, why if why is not None else f"{row.status}: {row.detail}"


def _title(mapping: str) -> str:
    task = mapping.removeprefix("MODEL_FOR_").removesuffix("_MAPPING_NAMES")
    return TITLES.get(task, task.replace("_", " ").capitalize())


def render(rows: Sequence[hf_checks.Row], transformers_version: str, torch_version: str) -> str:
    """The page for the sweep rows ``rows`` (in `hf_zoo.families` order)."""
    statuses = [status_of(row) for row in rows]
    count = {
        s: sum(status == s for status, _ in statuses) for s in (SUPPORTED, PARTLY, NOT_SUPPORTED)
    }
    built = len(rows) - sum(status == NOT_BUILT for status, _ in statuses)
    lines = [
        "# HuggingFace architectures",
        "",
        "Which architectures of HuggingFace `transformers` attnprobe supports, checked one by",
        "one. Every architecture of the installed transformers' multimodal and",
        "sequence-to-sequence auto mappings is built tiny from its config with random weights",
        "(nothing is downloaded), run on a batch of two samples (the first left-padded) with,",
        "where the model takes them, an image or an audio clip per sample, and probed with",
        "`attnprobe.auto_layout(model)`, on the `sdpa` and the `eager` attention",
        "implementations. An architecture is *supported* when, on both:",
        "",
        "- the model's outputs are `torch.equal` with and without the probe;",
        "- the masses of every probed layer are within 1e-5 of the model's own eager attention",
        "  weights, summed over the groups the layout gives (see",
        "  [attention mass](../concepts/attention-mass.md));",
        "- no attention layer is left out, apart from those on the media side of a",
        "  vision- or audio-language model (its towers, resamplers, Q-Formers: modules built",
        "  from one of its sub-configs other than the text config): `auto_layout` describes the",
        "  language model's tokens, and those layers are counted as *+ N of its media side*",
        '  (probe a vision tower with `auto_layout(model, tower="vision")`, the others with a',
        "  layout of their own).",
        "",
        "*Partly supported*: every layer the probe records is exact, but some attention",
        "layers have no automatic layout and are left out (reported in",
        "`ProbeResult.skipped`; the why column says which) — give them a layout of your own.",
        "*Not built tiny* means that the test zoo could not build a small random model of the",
        "architecture that runs (its reason is given): nothing was checked, which says nothing",
        "about attnprobe on it. *Not supported* means that the model was built and runs but",
        "attnprobe does not probe it exactly yet. Each architecture is listed once, under the",
        "first mapping that has it. [Probe a HuggingFace model](../guides/huggingface.md) shows",
        "how to probe one.",
        "",
        f"Generated with transformers `{transformers_version}` and torch `{torch_version}`:",
        f"{len(rows)} architectures, {built} built tiny, {count[SUPPORTED]} supported,",
        f"{count[PARTLY]} partly supported, {count[NOT_SUPPORTED]} not supported,",
        f"{len(rows) - built} not built tiny.",
        f"Regenerate this page with `python {SCRIPT}` (a few minutes on a",
        "CPU); the same checks run in the test suite, one test per architecture",
        "(`tests/test_hf_sweep.py`).",
    ]
    mappings = list(dict.fromkeys(row.mapping for row in rows))
    for mapping in mappings:
        mine = sorted(
            (
                (row, status)
                for row, status in zip(rows, statuses, strict=True)
                if row.mapping == mapping
            ),
            key=lambda pair: pair[0].model_type,
        )
        supported = sum(status == SUPPORTED for _, (status, _) in mine)
        lines += [
            "",
            f"## {_title(mapping)}",
            "",
            f"`{mapping}`: {len(mine)} architectures, {supported} supported.",
            "",
            "| Architecture | Kind | Status | Why |",
            "| --- | --- | --- | --- |",
        ]
        for row, (status, why) in mine:
            kind = cell(row.kind) if row.kind else "—"
            lines.append(f"| `{row.model_type}` | {kind} | {status} | {cell(short(why))} |")
    return "\n".join(lines) + "\n"


# -- reading --------------------------------------------------------------------------------------
_VERSIONS = re.compile(r"Generated with transformers `([^`]+)` and torch `([^`]+)`")
_CODE = re.compile(r"`([^`]+)`")
_CELLS = re.compile(r"(?<!\\)\|")


def read_page(text: str) -> Page:
    """The versions and the rows of a page `render` wrote."""
    versions = _VERSIONS.search(text)
    if versions is None:
        raise ValueError("no 'Generated with transformers ... and torch ...' line")
    rows: list[PageRow] = []
    mapping = ""
    for line in text.splitlines():
        if line.startswith("`MODEL_FOR_"):
            mapping = line[1:].split("`", 1)[0]
        elif line.startswith("| `"):
            cells = [c.strip() for c in _CELLS.split(line.strip()[1:-1])]
            model_type = _CODE.fullmatch(cells[0])
            if model_type is None or len(cells) != 4:
                raise ValueError(f"not a row of the table: {line}")
            kind = "" if cells[1] == "—" else cells[1]
            rows.append(PageRow(mapping, model_type[1], kind, cells[2], cells[3]))
    return Page(versions[1], versions[2], rows)


# -- command line ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PAGE, help="the page to write")
    parser.add_argument("--cap", type=float, default=hf_checks.CAP, help="seconds per model")
    args = parser.parse_args(argv)

    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    torch.set_num_threads(1)  # tiny models: more threads only add overhead (and contention)
    entries = hf_zoo.families()
    rows = []
    for i, entry in enumerate(entries, 1):
        row = hf_checks.sweep_one(entry, hf_checks.BACKENDS, args.cap, hf_checks.ATOL)
        rows.append(row)
        print(
            f"[{i}/{len(entries)}] {row.model_type:28s} {status_of(row)[0]:15s} "
            f"{row.detail[:100]} ({row.seconds:.1f} s)",
            flush=True,
        )
    args.out.write_text(render(rows, transformers.__version__, torch.__version__), "utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
