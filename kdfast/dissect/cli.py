"""Command line of the network dissection (scripts/dissect.py is its entry point)."""
import argparse
import os
import sys
from pathlib import Path

# torch and the pipeline are imported where they are needed, so that --help and argument errors come at once.
from kdfast.dissect.config import PREPROCESS, DissectConfig, parse_values

USAGE = r"""Network dissection of a model's layers over Broden.

With no arguments: the synthetic world's default trained model (kdfast.models.world, trained once and cached)
at layer4 over the world's synthetic Broden, into ./runs/dissect. A trainer checkpoint (best.pt) given as
--weights names its own architecture and input normalisation, so --model and --preprocess may be left out.
Under torchrun the images are sharded across ranks and rank 0 writes the results.

examples:
  python scripts/dissect.py --model resnet18 --weights ckpt.pth --layers layer3 layer4 \
      --broden broden1_224 --out runs/r18 --preprocess lite
  python scripts/dissect.py --weights runs/distill/kd/best.pt --layers layer3 layer4
  python scripts/dissect.py --model my_models.py:build --layers features.8 \
      --quantiles 0.001:0.010:0.001 --iou-thresholds 0.01:0.05:0.01
  torchrun --nproc_per_node 4 scripts/dissect.py --device cuda --broden broden1_224 --out runs/r18
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps USAGE's line breaks and shows each option's default."""


USER_ERRORS = (ValueError, FileNotFoundError)  # BrodenFormatError and RunMismatch are ValueErrors


def parse_args(argv):
    p = argparse.ArgumentParser(prog="dissect.py", description=USAGE,
                                formatter_class=_HelpFormatter)
    p.add_argument("--model",
                   help="torchvision model name, timm model name (if timm is installed), path/to/file.py:callable or "
                        "package.module:callable (default: the checkpoint's own with a trainer --weights; with "
                        "neither, the synthetic world's default model)")
    p.add_argument("--weights", help="state dict, or a checkpoint holding one under 'model'/'state_dict'; a trainer "
                                     "checkpoint (best.pt) also names its model and normalisation")
    p.add_argument("--trust-weights", action="store_true",
                   help="unpickle arbitrary objects in --weights (torch.load weights_only=False); trusted files only")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the weights of a model built without --weights (the same seed, the same model in "
                        "every process, resume and torchrun rank)")
    p.add_argument("--layers", nargs="+", default=["layer4"], help="module names to dissect (one forward pass)")
    p.add_argument("--broden", help="Broden directory (broden1_224 layout); default: the synthetic world's Broden")
    p.add_argument("--broden-cache", help="folder for the packed Broden (default: <broden>/.kdfast_cache)")
    p.add_argument("--out", default="runs/dissect", help="output folder")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--quantile", type=float, default=0.005, help="top fraction of activations for T_u")
    q.add_argument("--quantiles", help="sweep: 'start:stop:step' (stop included) or a comma list")
    p.add_argument("--iou-threshold", type=float, default=0.05, help="IoU for a detector (summary and report)")
    p.add_argument("--iou-thresholds", help="IoU thresholds for sweep.csv: 'start:stop:step' or a comma list")
    p.add_argument("--categories", nargs="+", help="Broden categories to use (default: all)")
    p.add_argument("--preprocess", choices=sorted(PREPROCESS),
                   help="input normalisation preset; 'lite' reproduces NetDissect-Lite's (default: a trainer "
                        "checkpoint's own normalisation, else imagenet)")
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="override the preset's mean (0..1)")
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="override the preset's std (0..1)")
    p.add_argument("--denominator", choices=["lite", "netdissect"], default="lite",
                   help="IoU denominator: NetDissect-Lite's category-gated one, or original NetDissect's")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: load in this process)")
    p.add_argument("--activation-cache-gb", type=float, default=2.0,
                   help="keep pass 1's activations in memory for pass 2 when they fit in this many GiB (0: never)")
    p.add_argument("--channels-last", action="store_true",
                   help="run the forward pass in channels_last memory format (changes activations in the last bits)")
    p.add_argument("--autocast", choices=["bfloat16", "float16"],
                   help="autocast the forward pass to this dtype (faster where the hardware has it; changes results)")
    p.add_argument("--fold-batchnorm", action="store_true",
                   help="fold each BatchNorm into the convolution before it (one pass fewer per layer; changes "
                        "activations in the last bits)")
    p.add_argument("--fast", action="store_true",
                   help="the fastest forward settings measured (docs/dissect_speed.md): --channels-last, "
                        "--fold-batchnorm and, where the device computes bfloat16 natively (AVX512_BF16/AMX CPUs, "
                        "CUDA compute capability >= 8), --autocast bfloat16; results differ from the exact float32 "
                        "default (reported in run.json)")
    p.add_argument("--activation-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype activations are stored in between the passes; thresholds and tallies use the stored "
                        "values")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N batches (default: by time)")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0,
                   help="checkpoint interval in seconds when --checkpoint-every is not given")
    p.add_argument("--restart", action="store_true", help="discard a checkpoint in --out and start over")
    p.add_argument("--top-images", type=int, default=5, help="top images shown per detector in report.html")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--pack-only", action="store_true",
                   help="only build the packed Broden cache (e.g. once before a torchrun job), then exit")
    return p.parse_args(argv)


def scale_warning(train_size, broden):
    """A message when the Broden's images are more than twice larger or smaller than the images the model was
    trained on (e.g. a 32-px student on broden1_224): its units then see objects at a scale it never learned."""
    from kdfast.data.broden import first_image_size

    size = first_image_size(broden)
    if size is None:
        return None  # the Broden reader names the defect later
    size = size[0]
    if max(size, train_size) > 2 * min(size, train_size):
        return (f"the model was trained on {train_size}-px images, the Broden's are {size} px; its units see "
                "objects at a scale it never learned (dissect a Broden of a matching size to avoid this)")
    return None


def resolve_model(args):
    """(model spec, weights, broden, (mean, std)) from --model/--weights/--broden/--preprocess: a trainer
    checkpoint names its own model and normalisation (an explicit --model must agree with it, checked here before
    any work); with neither --model nor --weights, the synthetic world's default model and its Broden."""
    from kdfast.data.synthetic_world import world_broden
    from kdfast.models.registry import checkpoint_info
    from kdfast.models.world import default_world_checkpoint

    model, weights, broden = args.model, args.weights, args.broden
    if model is None and weights is None:
        broden = broden or str(world_broden(progress=not args.quiet))
        if args.pack_only:  # only the Broden is needed
            return "-", None, broden, PREPROCESS["imagenet"]
        weights = str(default_world_checkpoint(progress=not args.quiet))
    norm = PREPROCESS[args.preprocess or "imagenet"]
    info = checkpoint_info(weights, trust=args.trust_weights) if weights is not None else None
    if info is not None:
        if model is not None and model != info.spec:
            raise ValueError(f"--model {model} does not match --weights {weights}, which holds a '{info.spec}' model "
                             f"(kwargs {info.kwargs}); drop --model to use the checkpoint's own")
        if info.input_encoding != "rgb":
            raise ValueError(f"--weights {weights}: the model takes '{info.input_encoding}'-encoded inputs, which "
                             "dissection does not feed")
        model = info.spec
        if broden is not None and info.image_size:
            warning = scale_warning(info.image_size, broden)
            if warning:
                print(f"dissect.py: warning: --weights {weights}: {warning}", file=sys.stderr)
        if args.preprocess is None:
            norm = (tuple(info.mean), tuple(info.std)) if info.mean is not None else ((0.0,) * 3, (1.0,) * 3)
    elif model is None:
        raise ValueError(f"--weights {weights} is a plain state dict that does not say which model it holds; name "
                         "it with --model (e.g. --model resnet18)")
    return model, weights, broden, norm


def native_bfloat16(device):
    """Whether `device` ("cpu", "cuda", "cuda:1") computes bfloat16 matrix products natively (faster than float32)."""
    import torch

    if device.split(":")[0] == "cuda":
        return torch.cuda.get_device_capability(torch.device(device))[0] >= 8
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def forward_settings(args):
    """channels_last / autocast / fold_batchnorm of the config: the flags as given, or --fast's choice."""
    if not args.fast:
        return {"channels_last": args.channels_last, "autocast": args.autocast, "fold_batchnorm": args.fold_batchnorm}
    autocast = args.autocast or ("bfloat16" if native_bfloat16(args.device) else None)
    return {"channels_last": True, "autocast": autocast, "fold_batchnorm": True}


def config_from_args(args):
    quantiles = parse_values(args.quantiles, "--quantiles") if args.quantiles else (args.quantile,)
    iou_thresholds = parse_values(args.iou_thresholds, "--iou-thresholds") if args.iou_thresholds else None
    if args.device.split(":")[0] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA GPU is visible to torch (use --device cpu)")
    if args.broden is not None and not Path(args.broden).is_dir():  # before a default model is trained
        from kdfast.data.broden import BrodenFormatError

        raise BrodenFormatError(f"Broden directory {args.broden} does not exist")
    model, weights, broden, (mean, std) = resolve_model(args)
    return DissectConfig(
        model=model,
        layers=tuple(args.layers),
        weights=weights,
        trust_weights=args.trust_weights,
        seed=args.seed,
        broden=broden,
        broden_cache=args.broden_cache,
        out=args.out,
        quantiles=quantiles,
        iou_threshold=args.iou_threshold,
        iou_thresholds=iou_thresholds,
        categories=args.categories,
        mean=tuple(args.mean) if args.mean else mean,
        std=tuple(args.std) if args.std else std,
        denominator=args.denominator,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        activation_cache_gb=args.activation_cache_gb,
        checkpoint_every=args.checkpoint_every,
        checkpoint_seconds=args.checkpoint_seconds,
        top_images=args.top_images,
        **forward_settings(args),
        activation_dtype=args.activation_dtype,
        restart=args.restart,
        progress=not args.quiet,
    )


def summary_table(result):
    """Text table: detectors per layer (and quantile) at the run's IoU threshold."""
    config = result.config
    categories = list(result.concepts.categories)
    header = ["layer", "quantile", "units", "detectors", "unique", *categories]
    rows = []
    for layer, tallies in result.tallies.items():
        for tally in tallies:
            found = tally.detectors(config.iou_threshold)
            rows.append([layer, repr(tally.quantile), tally.units, found.total, found.unique,
                         *(found.per_category[c] for c in categories)])
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in [header, *rows]]
    return "\n".join(lines)


def main(argv=None):
    """Runs the command line `argv` (default sys.argv[1:]); returns the Dissection (None with --pack-only)."""
    args = parse_args(argv)
    config = config_from_args(args)
    from kdfast.dissect.pipeline import dissect, pack_broden

    if args.pack_only:
        packed = pack_broden(config)
        print(f"packed {len(packed)} Broden images into {packed.cache_dir}")
        return None
    result = dissect(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"\ndissected {result.images} images in {result.seconds:.1f} s; IoU >= {result.config.iou_threshold}; "
              f"outputs in {result.config.out}/")
        print(summary_table(result))
    return result


def run():
    """Console entry: user errors print one line instead of a traceback. The process is the dissection's own, so
    it may set malloc up for it: fewer page faults per batch on a CPU (kdfast/host_memory.py)."""
    from kdfast.host_memory import keep_freed_memory

    keep_freed_memory()
    try:
        main()
    except USER_ERRORS as exc:
        sys.exit(f"dissect.py: error: {exc}")
