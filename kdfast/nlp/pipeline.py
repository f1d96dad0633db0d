"""The SST experiment of ICML 2023 §5.4 end to end: data, teacher, scratch and KD students, word-attribution
scores, and the Table 5 / Table 13 comparison.

Layout of an experiment folder (`out`):
  data/{train,dev,test}.txt   generated SST-format trees (only when no SST folder is given)
  teacher/                    trained teacher (HF folder + tokenizer + kdfast_training.json)
  students/L<layers>-<scratch|kd>-s<seed>/
  models.json                 what was trained: name, kind, layers, seed, path (read by evaluate)
  scores.json, scores.csv     per-model accuracy / AUROC / AUPRC on the evaluation splits
"""
import csv
import json
import os
import statistics
from dataclasses import asdict, dataclass, field

import torch

from .attribution import attribute_words
from .models import bert_config, load_checkpoint, new_classifier, student_from_teacher
from .scores import interpretability_scores
from .sst import read_sst_dir
from .synthetic_sst import make_synthetic_sst
from .tokenizer import train_wordpiece_tokenizer
from .train import TrainConfig, train_classifier

MANIFEST = "models.json"


@dataclass
class ModelSize:
    hidden_size: int = 64
    num_heads: int = 2
    intermediate_size: int = 256
    max_position: int = 256
    dropout: float = 0.1


@dataclass
class DistillSetup:
    out: str = "runs/nlp"
    data: str = None  # SST folder with train/dev/test.txt; None = generate the synthetic set into out/data
    classes: int = 4
    synthetic_sizes: tuple = (1500, 300, 300)
    teacher: str = None  # trained teacher checkpoint folder: used as is
    teacher_init: str = None  # pretrained BERT folder: a new head is fine-tuned on SST as the teacher
    teacher_layers: int = 4
    student_layers: tuple = (1, 2)
    student_init: str = "random"  # or "teacher": the teacher's embeddings and lowest layers
    seeds: tuple = (0,)
    vocab_size: int = 200
    size: ModelSize = field(default_factory=ModelSize)
    teacher_train: TrainConfig = field(default_factory=TrainConfig)
    student_train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "cpu"

    def __post_init__(self):
        if self.teacher and self.teacher_init:
            raise ValueError("give either teacher (a trained classifier) or teacher_init (a pretrained encoder to "
                             "fine-tune), not both")
        if self.student_init not in ("random", "teacher"):
            raise ValueError(f"student_init must be 'random' or 'teacher', got {self.student_init!r}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")


def load_splits(setup):
    """{split: examples}, generating the synthetic SST into out/data first when no data folder is given."""
    folder = setup.data
    if folder is None:
        folder = os.path.join(setup.out, "data")
        make_synthetic_sst(folder, sizes=setup.synthetic_sizes, seed=0)
    return read_sst_dir(folder, classes=setup.classes)


def _teacher(setup, splits):
    """(teacher, tokenizer, manifest entry): loaded, or fine-tuned from teacher_init, or trained from scratch."""
    if setup.teacher:
        teacher, tokenizer = load_checkpoint(setup.teacher, num_labels=setup.classes)
        return teacher, tokenizer, setup.teacher
    path = os.path.join(setup.out, "teacher")
    if setup.teacher_init:
        teacher, tokenizer = load_checkpoint(setup.teacher_init, num_labels=setup.classes, new_head=True)
    else:
        tokenizer = train_wordpiece_tokenizer([e.words for e in splits["train"]], vocab_size=setup.vocab_size)
        s = setup.size
        config = bert_config(len(tokenizer), setup.classes, num_layers=setup.teacher_layers,
                             hidden_size=s.hidden_size, num_heads=s.num_heads, intermediate_size=s.intermediate_size,
                             max_position=s.max_position, dropout=s.dropout, pad_token_id=tokenizer.pad_token_id)
        teacher = new_classifier(config, seed=setup.teacher_train.seed)
    train_classifier(teacher, tokenizer, splits["train"], setup.teacher_train, dev_examples=splits["dev"],
                     device=setup.device, checkpoint_dir=path, desc="teacher")
    return teacher, tokenizer, path


def run_distillation(setup):
    """Train (or load) the teacher, then for every seed and student depth a scratch and a KD student with the
    same initialisation; writes out/models.json and returns its entries."""
    splits = load_splits(setup)
    teacher, tokenizer, teacher_path = _teacher(setup, splits)
    models = [{"name": "teacher", "kind": "teacher", "layers": teacher.config.num_hidden_layers, "seed": None,
               "path": teacher_path}]
    for seed in setup.seeds:
        for layers in setup.student_layers:
            for kind in ("scratch", "kd"):
                name = f"L{layers}-{kind}-s{seed}"
                student = student_from_teacher(teacher, layers, copy_weights=setup.student_init == "teacher",
                                               seed=seed)
                config = TrainConfig(**{**asdict(setup.student_train), "seed": seed})
                path = os.path.join(setup.out, "students", name)
                train_classifier(student, tokenizer, splits["train"], config,
                                 teacher=teacher if kind == "kd" else None, dev_examples=splits["dev"],
                                 device=setup.device, checkpoint_dir=path, desc=name)
                models.append({"name": name, "kind": kind, "layers": layers, "seed": seed, "path": path})
    os.makedirs(setup.out, exist_ok=True)
    stored = [{**m, "path": _stored_path(m["path"], setup.out)} for m in models]
    with open(os.path.join(setup.out, MANIFEST), "w") as f:
        json.dump({"data": _stored_path(setup.data or os.path.join(setup.out, "data"), setup.out),
                   "classes": setup.classes, "models": stored}, f, indent=1)
    return models


def _stored_path(path, out):
    """A path as models.json stores it: relative to the output folder when inside it (the folder can move, and
    evaluate_nlp.py may run from another working directory), else absolute."""
    path, out = os.path.abspath(path), os.path.abspath(out)
    return os.path.relpath(path, out) if os.path.commonpath([path, out]) == out else path


def read_manifest(out):
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist; train the models first (python scripts/distill_nlp.py "
                                f"--out {out})")
    with open(path) as f:
        manifest = json.load(f)
    resolve = lambda p: os.path.normpath(os.path.join(out, p))  # noqa: E731  (an absolute p stays as it is)
    manifest["data"] = resolve(manifest["data"])
    manifest["models"] = [{**m, "path": resolve(m["path"])} for m in manifest["models"]]
    return manifest


def evaluate_models(models, examples, classes, n_steps=50, internal_batch_size=256, batch_size=32,
                    aggregate="sum", device="cpu"):
    """Scores (interpretability_scores plus max |convergence delta|) of every manifest entry on `examples`."""
    results = []
    for entry in models:
        model, tokenizer = load_checkpoint(entry["path"], num_labels=classes)
        attributions = attribute_words(model, tokenizer, examples, n_steps=n_steps,
                                       internal_batch_size=internal_batch_size, batch_size=batch_size,
                                       aggregate=aggregate, device=device)
        scores = interpretability_scores(examples, attributions.predictions.tolist(), attributions.words)
        scores["max_abs_delta"] = float(attributions.deltas.abs().max())
        results.append({**entry, **scores})
    return results


def _mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def comparison_table(results):
    """Table 5 / Table 13-style text: one row per (kind, layers), mean ± std over seeds."""
    groups = {}
    for r in results:
        groups.setdefault((r["kind"], r["layers"]), []).append(r)
    kind_name = {"teacher": "teacher", "scratch": "f_scratch", "kd": "f_KD", "model": "model"}
    kind_order = {"teacher": 0, "scratch": 1, "kd": 2, "model": 3}
    lines = [f"{'model':<22}{'runs':>5}{'accuracy':>18}{'AUROC':>18}{'AUPRC':>18}"]
    for kind, layers in sorted(groups, key=lambda g: (g[0] != "teacher", g[1], kind_order[g[0]])):
        rows = groups[(kind, layers)]
        cells = []
        for metric in ("accuracy", "auroc", "auprc"):
            mean, std = _mean_std([r[metric] for r in rows])
            cells.append(f"{mean:.3f} ± {std:.3f}" if len(rows) > 1 else f"{mean:.3f}")
        lines.append(f"{kind_name[kind] + f' ({layers}-layer)':<22}{len(rows):>5}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def write_scores(results, out):
    """scores.json (everything) and scores.csv (one row per model) in `out`."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "scores.json"), "w") as f:
        json.dump(results, f, indent=1)
    columns = ["name", "kind", "layers", "seed", "accuracy", "auroc", "auprc", "sentences", "words", "supporting",
               "max_abs_delta", "path"]
    with open(os.path.join(out, "scores.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)


def evaluation_examples(data, classes, splits=("dev", "test")):
    """The paper attributes on the validation and test samples: their union, in order."""
    loaded = read_sst_dir(data, classes=classes, splits=splits)
    return [e for split in splits for e in loaded[split]]


def set_threads(threads):
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
