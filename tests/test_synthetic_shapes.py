import numpy as np
import pytest
import torch
from PIL import Image

from kdfast.data.synthetic_shapes import (CLASSES, EMPTY_CLASS, SyntheticShapes, make_synthetic_shapes,
                                          object_boxes, render_sample, sample_rng, split_labels)


@pytest.mark.parametrize("label", range(10))
@pytest.mark.parametrize("size", [48, 160])
def test_ground_truth_aligns_with_the_drawn_shape(label, size):
    for seed in range(3):
        s = render_sample(label, size, np.random.default_rng([label, size, seed]), background="black")
        drawn = s.image.max(axis=2) > 0
        if label == EMPTY_CLASS:
            assert not drawn.any() and (s.ground_truth == 0).all()
            continue
        assert ((s.ground_truth > 0) == drawn).all()  # the object is exactly what was drawn
        features = s.ground_truth == 2
        assert features.any()
        assert np.allclose(s.image[features], s.border_colour)  # distinguishing region: the feature colour
        if label in (0, 3, 4, 5):  # the localisation region of these classes is the inner colour
            assert np.allclose(s.image[s.ground_truth == 1], s.inner_colour)
        # The distinguishing region lies inside the object's box, next to the localisation region.
        (x0, y0, x1, y1), = object_boxes(torch.from_numpy(s.ground_truth)[None])[0]
        ys, xs = np.nonzero(features)
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        assert (s.ground_truth == 1).any()


def test_rectangle_border_colour_names_the_class():
    for label, channel in ((3, 0), (4, 1), (5, 2)):
        s = render_sample(label, 64, np.random.default_rng(label))
        assert int(np.argmax(s.border_colour)) == channel


def test_generation_is_seeded_and_balanced(tmp_path):
    a = render_sample(7, 64, sample_rng(3, "train", 5))
    b = render_sample(7, 64, sample_rng(3, "train", 5))
    c = render_sample(7, 64, sample_rng(4, "train", 5))
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)
    labels = split_labels(25, seed=0, split="train")
    assert np.bincount(labels, minlength=10).tolist() == [3] * 5 + [2] * 5


def test_dataset_round_trip(tmp_path):
    root = make_synthetic_shapes(tmp_path / "shapes", {"train": 12, "test": 10}, size=40, seed=1)
    again = make_synthetic_shapes(tmp_path / "again", {"train": 12, "test": 10}, size=40, seed=1, workers=2)
    test = SyntheticShapes(root, "test")
    assert len(test) == 10 and len(SyntheticShapes(root, "train")) == 12
    image, label, truth = test[0]
    assert image.shape == (3, 40, 40) and truth.shape == (40, 40) and 0 <= label < len(CLASSES)
    assert float(image.min()) >= 0 and float(image.max()) <= 1 and set(truth.unique().tolist()) <= {0, 1, 2}
    other = SyntheticShapes(again, "test")
    assert torch.equal(other[3][0], test[3][0]) and torch.equal(other[3][2], test[3][2])
    images, labels, truths = SyntheticShapes(root, "test", image_size=24).load_all()
    assert images.shape == (10, 3, 24, 24) and truths.shape == (10, 24, 24) and labels.shape == (10,)
    empty = labels == 9
    assert (truths[empty] == 0).all() and (truths[~empty].flatten(1).amax(1) == 2).all()


def test_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_synthetic_shapes"):
        SyntheticShapes(tmp_path, "test")
    root = make_synthetic_shapes(tmp_path / "s", {"test": 2}, size=16)
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(root / "test" / "00000_gt.png")
    with pytest.raises(ValueError, match="00000_gt.png: ground truth values must be 0, 1, 2"):
        SyntheticShapes(root, "test")[0]
    (root / "test" / "labels.csv").write_text("file,gt_file,label\n00000.png,00000_gt.png,12\n")
    with pytest.raises(ValueError, match="line 2: label 12"):
        SyntheticShapes(root, "test")
    with pytest.raises(ValueError, match="label must be"):
        render_sample(10, 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown split"):
        make_synthetic_shapes(tmp_path / "x", {"val": 2})
