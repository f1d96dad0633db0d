"""The dissection's forward pass under each forward setting, batch size and thread count (the choice behind
`scripts/dissect.py --fast`): ResNet-18 up to `layer4` through the dissection's own LayerRecorder, on random
224-px images, images/s.

    python benchmarks/bench_dissect_forward.py                      # CPU: every setting x batch x threads
    python benchmarks/bench_dissect_forward.py --device cuda --threads 0

Writes benchmarks/results/bench_dissect_forward_<device>.json and .md.
"""
import argparse
import copy
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, time_fn, write_results  # noqa: E402
from kdfast.dissect.models import LayerRecorder, fold_batchnorm  # noqa: E402

# name → (channels_last, fold_batchnorm, autocast dtype): the settings dissect.py offers.
SETTINGS = {
    "exact (float32 NCHW)": (False, False, None),
    "channels_last": (True, False, None),
    "channels_last + fold": (True, True, None),
    "channels_last + bf16": (True, False, torch.bfloat16),
    "fast (channels_last + fold + bf16)": (True, True, torch.bfloat16),
}


def forward_fn(model, images, channels_last, autocast, device):
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    recorder = LayerRecorder(model, ["layer4"])

    def run():
        with torch.inference_mode(), torch.autocast(device, dtype=autocast, enabled=autocast is not None):
            return recorder(images)

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch CPU thread counts to try (0: leave torch's default)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    base = torchvision.models.resnet18().eval()
    rows = []
    for threads in args.threads:
        if threads:
            torch.set_num_threads(threads)
        for batch in args.batch_sizes:
            images = torch.randn(batch, 3, 224, 224, device=args.device)
            for name, (channels_last, fold, autocast) in SETTINGS.items():
                model = copy.deepcopy(base)
                if fold:
                    fold_batchnorm(model)
                seconds = time_fn(forward_fn(model, images, channels_last, autocast, args.device), args.device,
                                  warmup=1, repeat=args.repeat)
                rows.append({"setting": name, "batch": batch, "threads": torch.get_num_threads(),
                             "images_per_s": batch / seconds})
                print(rows[-1], flush=True)
    out = args.out or Path(__file__).resolve().parent / "results" / f"bench_dissect_forward_{args.device}.json"
    print(write_results(rows, environment(args.device), out, "Dissection forward pass (ResNet-18 to layer4)"))


if __name__ == "__main__":
    main()
