"""Images with bounding boxes for training and evaluation: a resize to a square input (no crop, so no box is
cut; the e2KD paper evaluates VOC at (224, 224) without a centre crop), an optional horizontal flip applied
to image and boxes together, and boxes padded to a fixed count so that batches collate.

Boxes are rows [class, x0, y0, x1, y1] in pixels, half-open ([x0, x1) × [y0, y1)); padding rows are all −1.
"""
import torch
from torchvision.transforms import functional as TF

PAD = -1


def pad_boxes(boxes, count):
    """(count, 5) int64 tensor of [class, x0, y0, x1, y1] rows, padded with −1 rows."""
    if len(boxes) > count:
        raise ValueError(f"{len(boxes)} boxes do not fit the padding of {count}")
    out = torch.full((count, 5), PAD, dtype=torch.int64)
    if boxes:
        out[: len(boxes)] = torch.tensor([list(map(int, b)) for b in boxes], dtype=torch.int64)
    return out


class BoxedTransform:
    """(PIL image, boxes in its pixels) → (tensor (3 or 6, S, S), boxes in the S×S input's pixels).

    `flip`: a horizontal flip with probability 0.5 (from torch's generator, which the trainer seeds per item);
    `normalize` with mean/std; `bcos`: the 6-channel B-cos encoding of the unnormalised image."""

    def __init__(self, image_size, flip=False, normalize=True, mean=None, std=None, bcos=False):
        self.size = int(image_size)
        self.flip, self.normalize, self.mean, self.std, self.bcos = flip, normalize, mean, std, bcos

    def __call__(self, image, boxes):
        width, height = image.size
        image = TF.resize(image.convert("RGB"), [self.size, self.size])
        sx, sy = self.size / width, self.size / height
        boxes = [(c, round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)) for c, x0, y0, x1, y1 in boxes]
        if self.flip and float(torch.rand(())) < 0.5:
            image = TF.hflip(image)
            boxes = [(c, self.size - x1, y0, self.size - x0, y1) for c, x0, y0, x1, y1 in boxes]
        tensor = TF.to_tensor(image)
        if self.bcos:
            from kdfast.models.bcos import encode_input

            tensor = encode_input(tensor[None])[0]
        elif self.normalize:
            tensor = TF.normalize(tensor, self.mean, self.std)
        return tensor, boxes
