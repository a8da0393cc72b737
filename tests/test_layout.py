"""ModalityLayout: construction, labels, and pinned error messages."""

from __future__ import annotations

import re

import pytest
import torch

import attnprobe as ap
from attnprobe.errors import ModalityLayoutError


def test_lengths_give_contiguous_spans() -> None:
    layout = ap.ModalityLayout({"cls": 1, "audio": 2, "video": 3})
    assert layout.names == ("cls", "audio", "video")
    assert layout.length == 6
    assert layout.counts == {"cls": 1, "audio": 2, "video": 3}
    assert layout.labels(2, 6).tolist() == [[0, 1, 1, 2, 2, 2]] * 2
    assert not layout.is_per_sample


def test_spans_leave_gaps_ignored() -> None:
    layout = ap.ModalityLayout.from_spans({"a": slice(1, 3), "b": slice(4, None)}, 6)
    assert layout.labels(1, 6).tolist() == [[-1, 0, 0, -1, 1, 1]]


def test_labels_per_sample() -> None:
    labels = torch.tensor([[0, 1, -1], [1, 1, 0]])
    layout = ap.ModalityLayout.from_labels(labels, ["x", "y"])
    assert layout.is_per_sample
    assert torch.equal(layout.labels(2, 3), labels)
    assert layout.counts == {"x": 2, "y": 3}


def test_equality() -> None:
    a = ap.ModalityLayout({"a": 1, "b": 2})
    assert a == ap.ModalityLayout.from_spans({"a": slice(0, 1), "b": slice(1, 3)}, 3)
    assert a != ap.ModalityLayout({"a": 2, "b": 1})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ap.ModalityLayout({}), "ModalityLayout: expected at least one modality name"),
        (lambda: ap.ModalityLayout({"a": -1}), "expected a non-negative int token count for 'a'"),
        (lambda: ap.ModalityLayout({"a": 1.5}), "expected a non-negative int token count"),
        (lambda: ap.ModalityLayout([("a", 1)]), "expected a mapping of modality name -> token"),
        (
            lambda: ap.ModalityLayout.from_spans({"a": slice(0, 3), "b": slice(2, 4)}, 5),
            "spans 'a' and 'b' overlap at position 2",
        ),
        (
            lambda: ap.ModalityLayout.from_spans({"a": slice(0, 9)}, 5),
            "span 'a' = [0, 9) is out of range for a sequence of length 5",
        ),
        (
            lambda: ap.ModalityLayout.from_spans({"a": slice(-2, None)}, 5),
            "negative indices are not accepted",
        ),
        (
            lambda: ap.ModalityLayout.from_spans({"a": slice(0, 4, 2)}, 5),
            "span 'a' must have step 1",
        ),
        (
            lambda: ap.ModalityLayout.from_labels(torch.zeros(3, dtype=torch.long), ["a"]),
            "expected labels of shape [B, L] (2 dimensions), received shape [3]",
        ),
        (
            lambda: ap.ModalityLayout.from_labels(torch.zeros(2, 3), ["a"]),
            "expected an integer label tensor (e.g. torch.long), received dtype torch.float32",
        ),
        (
            lambda: ap.ModalityLayout.from_labels(torch.tensor([[0, 2]]), ["a", "b"]),
            "expected label values in [-1, 1]",
        ),
        (
            lambda: ap.ModalityLayout.from_labels([[0, 1]], ["a", "b"]),  # type: ignore[arg-type]
            "expected labels as a torch.Tensor of shape [B, L], received list",
        ),
        (
            lambda: ap.ModalityLayout.from_labels(torch.zeros(1, 2, dtype=torch.long), ["a", "a"]),
            "modality names must be unique, received duplicates ['a']",
        ),
        (lambda: ap.ModalityLayout({"a": 1}).index("b"), "unknown modality 'b'; expected one of"),
    ],
)
def test_errors_are_pinned(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModalityLayoutError, match=re.escape(message)):
        build()


def test_length_mismatch_message() -> None:
    layout = ap.ModalityLayout({"cls": 1, "audio": 64, "video": 196})
    with pytest.raises(
        ModalityLayoutError,
        match=re.escape(
            "the modality layout covers 261 tokens (cls=1, audio=64, video=196) but the "
            "sequence has 260 tokens"
        ),
    ):
        layout.labels(2, 260)


def test_per_sample_batch_mismatch_message() -> None:
    layout = ap.ModalityLayout.from_labels(torch.zeros(2, 4, dtype=torch.long), ["a"])
    with pytest.raises(ModalityLayoutError, match=re.escape("pass labels for this batch")):
        layout.labels(3, 4)


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        ap.ModalityLayout({"a": -3})
