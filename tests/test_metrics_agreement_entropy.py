import math

import numpy as np
import pytest
import torch

from kdfast.data.categories import CategoryMap, load_category_map
from kdfast.metrics.agreement import top1_agreement
from kdfast.metrics.entropy import category_entropy, entire_entropy


def test_agreement_hand_case_with_ties():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    teacher = torch.tensor([[0.0, 1.0], [0.0, 1.0], [3.0, 3.0]])  # tie: both pick class 0
    assert top1_agreement(student, teacher) == pytest.approx(2 / 3)


@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (64, 10)])
def test_agreement_matches_direct(gen, n, k):
    s, t = torch.randn(n, k, generator=gen), torch.randn(n, k, generator=gen)
    same = [int(np.argmax(s[i].numpy()) == np.argmax(t[i].numpy())) for i in range(n)]
    assert top1_agreement(s, t) == pytest.approx(sum(same) / n)


def test_agreement_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        top1_agreement(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="NaN.*sample 1"):
        top1_agreement(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="no samples"):
        top1_agreement(torch.zeros(0, 3), torch.zeros(0, 3))


def test_entire_entropy_hand_cases():
    assert entire_entropy(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    assert entire_entropy(torch.tensor([[0.0]])).item() == pytest.approx(0.0)
    assert entire_entropy(torch.tensor([[1000.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-12)


def _direct_entropy(p):
    p = np.asarray(p, np.float64)
    p = p / p.sum()
    return -sum(x * math.log(x) for x in p if x > 0)


@pytest.mark.parametrize("n,k", [(1, 2), (5, 6), (40, 12)])
def test_entropies_match_direct(gen, n, k):
    logits = torch.randn(n, k, generator=gen) * 3
    groups = {"a": list(range(0, k // 2)), "b": list(range(k // 2, k - 1))}  # class k-1: no category
    cmap = CategoryMap.from_groups(groups, k)
    targets = torch.randint(0, max(k - 1, 1), (n,), generator=gen)
    probs = torch.softmax(logits.double(), 1).numpy()
    expected_entire = [_direct_entropy(p) for p in probs]
    assert torch.allclose(entire_entropy(logits), torch.tensor(expected_entire, dtype=torch.float64), atol=1e-9)
    included = cmap.included(targets)
    assert bool(included.all())
    expected = []
    for i in range(n):
        members = [c for c in range(k) if cmap.class_category[c] == cmap.class_category[int(targets[i])]]
        expected.append(_direct_entropy(probs[i][members]))
    got = category_entropy(logits, targets, cmap)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-9)


def test_category_entropy_hand_case():
    cmap = CategoryMap.from_groups({"a": [0, 1], "b": [2, 3]}, 4)
    logits = torch.tensor([[0.0, 0.0, 5.0, -1.0], [7.0, 7.0, 7.0, 7.0]])
    got = category_entropy(logits, torch.tensor([0, 3]), cmap)
    assert got.tolist() == pytest.approx([math.log(2), math.log(2)])


def test_category_entropy_rejects_excluded_class_and_bad_targets():
    cmap = CategoryMap.from_groups({"a": [0, 1]}, 3)
    with pytest.raises(ValueError, match="class 2 has no category"):
        category_entropy(torch.zeros(2, 3), torch.tensor([0, 2]), cmap)
    with pytest.raises(ValueError, match="covers 3 classes"):
        category_entropy(torch.zeros(2, 4), torch.tensor([0, 1]), cmap)
    with pytest.raises(ValueError, match="classes 0..5"):
        category_entropy(torch.zeros(2, 3), torch.tensor([0, 5]), cmap)


def test_packaged_imagenet_map():
    cmap = load_category_map(num_classes=1000)
    assert cmap.num_classes == 1000
    assert len(cmap.categories) == 66 and "other" not in cmap.categories  # 67 with "other"
    assert cmap.class_category[0] == "fish" and cmap.class_category[999] is None
    assert len(cmap.members("dog")) == 119


def _write(tmp_path, text):
    path = tmp_path / "map.csv"
    path.write_text(text)
    return path


def test_category_map_errors(tmp_path):
    with pytest.raises(ValueError, match="line 3: unknown class 3"):
        load_category_map(_write(tmp_path, "index,category\n0,a\n3,b\n"), num_classes=3)
    with pytest.raises(ValueError, match="line 3: class 0 is listed again"):
        load_category_map(_write(tmp_path, "index,category\n0,a\n0,b\n"))
    with pytest.raises(ValueError, match="missing column"):
        load_category_map(_write(tmp_path, "idx,category\n0,a\n"))
    with pytest.raises(ValueError, match="line 2: index 'x'"):
        load_category_map(_write(tmp_path, "index,category\nx,a\n"))
    with pytest.raises(ValueError, match=r"classes \[1\] are not listed"):
        load_category_map(_write(tmp_path, "index,category\n0,a\n2,b\n"), num_classes=3)
    with pytest.raises(FileNotFoundError):
        load_category_map(tmp_path / "missing.csv")
    cmap = load_category_map(_write(tmp_path, "index,synset,category\n0,s,a\n1,s,other\n2,s,a\n"))
    assert cmap.class_category == ("a", None, "a")
