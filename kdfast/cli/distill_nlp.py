"""Train a BERT teacher and scratch / KD students on SST, then score their word attributions (ICML 2023 §5.4).

    python scripts/distill_nlp.py                                 # embedded default: synthetic SST, tiny BERTs, CPU
    python scripts/distill_nlp.py --data path/to/trees --out runs/sst \\
        --teacher-layers 12 --student-layers 3 6 --hidden-size 768 --heads 12 --intermediate-size 3072 \\
        --vocab-size 16000 --lr 1e-4 --seeds 0 1 2 --device cuda --amp
    python scripts/distill_nlp.py --data path/to/trees --teacher-init path/to/bert-base-uncased \\
        --teacher-lr 2e-5 --student-init teacher --student-layers 3 6 --device cuda --amp

Writes <out>/teacher, <out>/students/L<layers>-<scratch|kd>-s<seed> (Hugging Face folders with the tokenizer),
<out>/models.json, and (unless --no-eval) <out>/scores.{json,csv}, and prints the Table 5-style comparison.
"""
import argparse
from dataclasses import replace
from pathlib import Path

# torch, transformers and the pipeline are imported where they are needed, so that --help and argument errors come
# at once.


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="SST folder with the PTB tree files train.txt, dev.txt, test.txt "
                                  "(default: generate the synthetic SST into <out>/data)")
    p.add_argument("--out", default="runs/nlp", help="experiment folder (default: runs/nlp)")
    p.add_argument("--classes", type=int, default=4, choices=(5, 4, 2),
                   help="4: drop neutral sentences (paper); 2: SST-2; 5: fine-grained")
    p.add_argument("--synthetic-sizes", type=int, nargs=3, default=(1500, 300, 300), metavar=("TRAIN", "DEV", "TEST"))
    teacher = p.add_mutually_exclusive_group()
    teacher.add_argument("--teacher", help="trained teacher checkpoint folder (config.json, weights, tokenizer); "
                                           "used as is, its tokenizer is shared with the students")
    teacher.add_argument("--teacher-init", help="pretrained BERT folder (e.g. bert-base-uncased on disk): a new head "
                                                "is fine-tuned on SST as the teacher")
    p.add_argument("--teacher-layers", type=int, default=4, help="teacher depth when trained from scratch (paper: 12)")
    p.add_argument("--student-layers", type=int, nargs="+", default=(1, 2), help="student depths (paper: 3 6)")
    p.add_argument("--student-init", choices=("random", "teacher"), default="random",
                   help="students start random or from the teacher's embeddings and lowest layers (both kinds alike)")
    p.add_argument("--seeds", type=int, nargs="+", default=(0,), help="one scratch + one KD student per seed "
                                                                      "(paper: 3 runs)")
    p.add_argument("--vocab-size", type=int, default=200, help="WordPiece vocabulary learned from the training split")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--intermediate-size", type=int, default=256)
    p.add_argument("--max-position", type=int, default=256, help="longest tokenized sentence allowed")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--teacher-epochs", type=int, help="default: --epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (1e-3 suits tiny BERTs from scratch)")
    p.add_argument("--teacher-lr", type=float, help="default: --lr (use ~2e-5 with --teacher-init)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--alpha", type=float, default=0.5, help="KD weight of the soft-target term")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the tiny embedded models gain nothing from more)")
    p.add_argument("--no-eval", action="store_true", help="only train; score later with scripts/evaluate_nlp.py")
    add_evaluation_args(p)
    return p.parse_args(argv)


def add_evaluation_args(p):
    p.add_argument("--splits", nargs="+", default=("dev", "test"), choices=("train", "dev", "test"),
                   help="sentences to attribute (paper: validation and test)")
    p.add_argument("--n-steps", type=int, default=50, help="Integrated Gradients steps")
    p.add_argument("--internal-batch-size", type=int, default=512, help="interpolated inputs per forward pass")
    p.add_argument("--attribution-batch-size", type=int, default=32, help="sentences per captum call")
    p.add_argument("--aggregate", choices=("sum", "mean"), default="sum", help="how a word's pieces are combined")


def setup_from_args(args):
    from kdfast.nlp.pipeline import DistillSetup, ModelSize
    from kdfast.nlp.train import TrainConfig

    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                        alpha=args.alpha, temperature=args.temperature, amp=args.amp)
    teacher_train = replace(train, epochs=args.teacher_epochs or args.epochs, lr=args.teacher_lr or args.lr)
    return DistillSetup(
        out=args.out, data=args.data, classes=args.classes, synthetic_sizes=tuple(args.synthetic_sizes),
        teacher=args.teacher, teacher_init=args.teacher_init, teacher_layers=args.teacher_layers,
        student_layers=tuple(args.student_layers), student_init=args.student_init, seeds=tuple(args.seeds),
        vocab_size=args.vocab_size,
        size=ModelSize(hidden_size=args.hidden_size, num_heads=args.heads, intermediate_size=args.intermediate_size,
                       max_position=args.max_position, dropout=args.dropout),
        teacher_train=teacher_train, student_train=train, device=args.device,
    )


def evaluate_and_report(models, data, classes, args, out):
    from kdfast.nlp.pipeline import comparison_table, evaluate_models, evaluation_examples, write_scores

    examples = evaluation_examples(data, classes, tuple(args.splits))
    results = evaluate_models(models, examples, classes, n_steps=args.n_steps,
                              internal_batch_size=args.internal_batch_size, batch_size=args.attribution_batch_size,
                              aggregate=args.aggregate, device=args.device)
    write_scores(results, out)
    print(f"\nWord-attribution interpretability on {'+'.join(args.splits)} ({len(examples)} sentences; AUROC/AUPRC "
          "over the polar words of correctly classified sentences):")
    print(comparison_table(results))
    print(f"\nscores: {Path(out) / 'scores.csv'}")
    return results


def main(argv=None):
    args = parse_args(argv)
    from kdfast.nlp.pipeline import run_distillation, set_threads

    set_threads(args.threads)
    setup = setup_from_args(args)
    models = run_distillation(setup)
    print(f"trained: {', '.join(m['name'] for m in models)} -> {Path(args.out) / 'models.json'}")
    if not args.no_eval:
        evaluate_and_report(models, args.data or str(Path(args.out) / "data"), args.classes, args, args.out)


