"""Compare models by interpretability measures beyond dissection; writes results.json, figures/*.png and
report.html to --out.

    python scripts/evaluate.py                                   # the embedded default, see below
    python scripts/evaluate.py --models runs/scratch/best.pt runs/kd/best.pt --teacher runs/teacher/best.pt \\
        --data data/shapes --metrics agreement,entropy,fiveband,diffroar,lossgrad,epg,shift
    python scripts/evaluate.py --models a.pth b.pth --arch resnet18 --imagefolder ~/data/imagenet \\
        --categories kdfast/data/imagenet_categories.csv --normalize imagenet --metrics entropy,lossgrad,shift

Metrics: agreement (top-1, vs --teacher), entropy (entire / within the true class's category), fiveband
(five-band scores + binary splits, synthetic shapes only), diffroar, lossgrad (figure), epg (EPG and IoU against
boxes), shift (shift-equivariance curve). Without --metrics every metric the data supports runs.

With no --models: evaluates the students of `python scripts/distill.py`'s embedded default (runs/distill/<run>/
best.pt, teacher runs/distill/teacher/best.pt) on their validation data; when that folder does not exist, trains a
small teacher, a scratch and a KD student on generated 48-px shapes (cached under --out) and compares those.
"""
import argparse
import sys
from pathlib import Path

# torch and the pipeline are imported after the arguments are parsed, so that --help comes at once; the parser's
# choices and defaults that live beside torch code (explainers, DiffROAR fractions, the tiny ResNet) are applied then.


def _list(kind):
    def parse(text):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of {kind.__name__}s, got '{text}'") from None
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = p.add_argument_group("models")
    models.add_argument("--models", nargs="+", help="checkpoints ({'model', 'config'}) or state dicts (with --arch)")
    models.add_argument("--names", nargs="+", help="display names, one per --models entry")
    models.add_argument("--arch", help="architecture of plain state dicts: torchvision name or file.py:callable")
    models.add_argument("--teacher", help="teacher checkpoint, for the agreement metric")
    models.add_argument("--teacher-arch", help="architecture of a plain-state-dict teacher")
    models.add_argument("--normalize", default="auto", choices=("auto", "none", "imagenet"),
                        help="input normalisation inside the models (auto: the training config's, else none)")
    models.add_argument("--students-dir",
                        help="without --models: a distillation output folder of <run>/best.pt (an error when it "
                             "holds none). Default: runs/distill, and when that holds no runs, small fallback models "
                             "are trained on generated shapes")
    data = p.add_argument_group("data")
    data.add_argument("--data", help="synthetic shapes folder (scripts/make_synthetic_shapes.py)")
    data.add_argument("--imagefolder", help="ImageFolder root with <test-split>/ and <train-split>/ class folders")
    data.add_argument("--test-split", default="val")
    data.add_argument("--train-split", default="train")
    data.add_argument("--categories", help="class → category CSV (index,category); 'other' is excluded")
    data.add_argument("--boxes", help="CSV image,x0,y0,x1,y1 of boxes in the test split (for epg)")
    data.add_argument("--num-classes", type=int, help="classes of the models (default: the data's)")
    data.add_argument("--image-size", type=int, help="evaluate at this size (default: synthetic native, else 224)")
    data.add_argument("--num-test", type=int, help="evaluate on a seeded random subset of the test images")
    data.add_argument("--num-train", type=int, help="DiffROAR: retrain on a seeded subset of the training images")
    run = p.add_argument_group("metrics")
    run.add_argument("--metrics", type=_list(str), help="comma list of the metrics above (default: all possible)")
    run.add_argument("--out", default="runs/evaluate", help="output folder")
    run.add_argument("--explainer", default="saliency",
                     help="explanations for epg and shift: a kdfast.metrics.attribution method (saliency, gradcam)")
    run.add_argument("--gradcam-layer", help="Grad-CAM layer (default: the last conv block)")
    run.add_argument("--iou-threshold", type=float, default=0.5)
    run.add_argument("--max-shift", type=int, default=8, help="shift curve: largest diagonal shift in pixels")
    run.add_argument("--shift-images", type=int, default=32)
    run.add_argument("--visual-samples", type=int, default=10, help="images in the saliency / gradient grids")
    run.add_argument("--roar-arch", help="DiffROAR retraining model (default: a tiny ResNet)")
    run.add_argument("--roar-epochs", type=int, default=2)
    run.add_argument("--roar-runs", type=int, default=1, help="repetitions with seeds seed, seed+1, …")
    run.add_argument("--roar-fractions", type=_list(float),
                     help="DiffROAR removal fractions (default: kdfast.metrics.diffroar.FRACTIONS, 0.1..0.9)")
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    run.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from kdfast.evaluate.models import TINY_RESNET
    from kdfast.metrics.attribution import METHODS
    from kdfast.metrics.diffroar import FRACTIONS

    if args.explainer not in METHODS:
        p.error(f"argument --explainer: invalid choice: '{args.explainer}' (choose from {', '.join(METHODS)})")
    args.roar_arch = args.roar_arch or TINY_RESNET
    args.roar_fractions = list(FRACTIONS) if args.roar_fractions is None else args.roar_fractions
    return args


def load_data(args, config=None):
    from kdfast.evaluate.data import image_folder_data, synthetic_shapes_data
    from kdfast.evaluate.sources import data_of_run

    if args.data and args.imagefolder:
        raise ValueError("pass either --data (synthetic shapes) or --imagefolder, not both")
    limits = dict(test_limit=args.num_test, train_limit=args.num_train, seed=args.seed)
    if args.data:
        return synthetic_shapes_data(args.data, args.image_size, **limits)
    if args.imagefolder:
        return image_folder_data(args.imagefolder, args.image_size or 224, args.test_split, args.train_split,
                                 args.categories, args.boxes, **limits)
    if config is not None and config.get("data"):
        return data_of_run(config, args.image_size, **limits)
    raise ValueError("no data: pass --data (synthetic shapes) or --imagefolder")


def setup(args):
    """(data, models, sources, teacher)."""
    from kdfast.evaluate.models import check_architecture, read_checkpoint
    from kdfast.evaluate.sources import DISTILL_DEFAULT_DIR, distill_runs, fallback_setup, load_models

    if args.models is None:
        folder = args.students_dir or DISTILL_DEFAULT_DIR
        students, teacher_path = distill_runs(folder)
        if not students and args.students_dir is not None:  # asked for: never replaced by another experiment
            raise FileNotFoundError(f"--students-dir {folder}: no distillation runs (<run>/best.pt) in it")
        if not students:
            print(f"[evaluate] no runs in {folder}: training a teacher, a scratch and a KD student on "
                  f"generated shapes under {args.out}")
            return fallback_setup(args.out, args.device, args.num_test, args.num_train, args.seed)
        print(f"[evaluate] evaluating the distillation runs in {folder}: {', '.join(students)}")
        args.models, args.names = [str(p) for p in students.values()], list(students)
        args.teacher = args.teacher or (str(teacher_path) if teacher_path else None)
    for path in args.models:
        check_architecture(path, args.arch)
    if args.teacher:
        check_architecture(args.teacher, args.teacher_arch, "--teacher-arch")
    checkpoint = read_checkpoint(args.models[0])
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    data = load_data(args, config)
    num_classes = args.num_classes or data.num_classes
    models, sources, _ = load_models(args.models, num_classes, args.arch, args.names, args.normalize, args.device)
    teacher = None
    if args.teacher:
        teacher = load_models([args.teacher], num_classes, args.teacher_arch, ["teacher"], args.normalize,
                              args.device)[0]["teacher"]
    return data, models, sources, teacher


def main(argv=None):
    args = parse_args(argv)
    from kdfast.evaluate.e2kd_settings import boxed_runs
    from kdfast.evaluate.models import TINY_RESNET
    from kdfast.evaluate.pipeline import METRICS, EvalOptions, Evaluation

    if args.models and boxed_runs(args.models):  # Waterbirds / VOC runs (docs/e2kd_settings.md): their measures
        from kdfast.cli import evaluate_e2kd

        return evaluate_e2kd.main(args.models + ["--split", args.test_split, "--out", args.out]
                                 + (["--teacher", args.teacher] if args.teacher else []))
    data, models, sources, teacher = setup(args)
    options = EvalOptions(batch_size=args.batch_size, explainer=args.explainer, gradcam_layer=args.gradcam_layer,
                          iou_threshold=args.iou_threshold, max_shift=args.max_shift, shift_images=args.shift_images,
                          visual_samples=args.visual_samples, roar_arch=args.roar_arch, roar_epochs=args.roar_epochs,
                          roar_runs=args.roar_runs, roar_fractions=tuple(args.roar_fractions), seed=args.seed)
    if args.roar_arch != TINY_RESNET:
        options.roar_kwargs = {}
    evaluation = Evaluation(models, data, args.out, teacher, options)
    results = evaluation.run(args.metrics or METRICS, explicit=args.metrics is not None, sources=sources)
    print(f"[evaluate] wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.html'}")
    for metric, reason in results["skipped"].items():
        print(f"[evaluate] skipped {metric}: {reason}")
    return results




def run():
    """Console entry: user errors print one line instead of a traceback."""
    try:
        main()
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
