"""BERT sequence classifiers (transformers.BertForSequenceClassification) for the SST experiments: built from a
config (the paper's 12-layer teacher and 3/6-layer students, or tiny CPU sizes), students initialised from a
teacher's lower layers, and checkpoints as local Hugging Face folders (config.json + weights + tokenizer)."""
import copy
import json
import os

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

TRAINING_INFO = "kdfast_training.json"


def bert_config(vocab_size, num_labels, num_layers=4, hidden_size=64, num_heads=2, intermediate_size=None,
                max_position=256, dropout=0.1, pad_token_id=0):
    """A BertConfig; intermediate_size defaults to 4 * hidden_size as in BERT. The paper's sizes are
    num_layers=12 (teacher) or 3/6 (students), hidden_size=768, num_heads=12."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    for name, value in (("vocab_size", vocab_size), ("num_labels", num_labels), ("num_layers", num_layers),
                        ("max_position", max_position)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    return BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_position, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        num_labels=num_labels, pad_token_id=pad_token_id,
    )


def new_classifier(config, seed=None):
    """A randomly initialised BertForSequenceClassification; `seed` makes the initialisation reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def student_from_teacher(teacher, num_layers, copy_weights=True, seed=None):
    """A student with the teacher's config but `num_layers` encoder layers. With copy_weights the student
    starts from the teacher's embeddings, its lowest `num_layers` layers, pooler and classifier (DistilBERT-style
    initialisation); otherwise it is randomly initialised."""
    layers = teacher.config.num_hidden_layers
    if not 1 <= num_layers <= layers:
        raise ValueError(f"student num_layers must be in 1..{layers} (the teacher's depth), got {num_layers}")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = num_layers
    student = new_classifier(config, seed)
    if copy_weights:
        # The student's keys are exactly the teacher's minus layers >= num_layers, so strict loading checks it.
        wanted = student.state_dict().keys()
        student.load_state_dict({k: v for k, v in teacher.state_dict().items() if k in wanted}, strict=True)
    return student


def save_checkpoint(folder, model, tokenizer, info=None):
    """save_pretrained of the model and its tokenizer into `folder` (loadable by any transformers code), plus
    the training record `info` as kdfast_training.json."""
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if info is not None:
        with open(os.path.join(folder, TRAINING_INFO), "w") as f:
            json.dump(info, f, indent=1)


def load_tokenizer(folder):
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder {folder!r} does not exist")
    if not any(os.path.isfile(os.path.join(folder, name)) for name in ("tokenizer.json", "vocab.txt")):
        raise FileNotFoundError(f"checkpoint folder {folder!r} has no tokenizer (expected tokenizer.json or "
                                "vocab.txt next to config.json)")
    return BertTokenizer.from_pretrained(folder, local_files_only=True)


def load_checkpoint(folder, num_labels=None, new_head=False):
    """(model, tokenizer) from a local Hugging Face folder (config.json, model.safetensors or
    pytorch_model.bin, tokenizer.json or vocab.txt), e.g. one written by save_checkpoint or a downloaded
    bert-base-uncased. A classifier must have `num_labels` outputs; new_head=True instead attaches a fresh
    `num_labels`-way head (to fine-tune a pretrained encoder)."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"checkpoint folder {folder!r} has no config.json")
    config = BertConfig.from_pretrained(folder, local_files_only=True)
    if config.model_type != "bert":
        raise ValueError(f"{folder}/config.json describes a {config.model_type!r} model, expected 'bert'")
    if new_head:
        if num_labels is None:
            raise ValueError("new_head=True needs num_labels")
        model = BertForSequenceClassification.from_pretrained(folder, local_files_only=True, num_labels=num_labels,
                                                              ignore_mismatched_sizes=True)
    else:
        if "BertForSequenceClassification" not in (config.architectures or []):
            raise ValueError(f"{folder} holds {config.architectures or 'an unnamed architecture'}, not a trained "
                             "BertForSequenceClassification; pass new_head=True / --teacher-init to fine-tune it "
                             "with a new classification head")
        if num_labels is not None and config.num_labels != num_labels:
            raise ValueError(f"{folder} is a {config.num_labels}-class model, expected {num_labels} classes "
                             "(pass new_head=True / --teacher-init to fine-tune it with a new head)")
        model = BertForSequenceClassification.from_pretrained(folder, local_files_only=True)
    tokenizer = load_tokenizer(folder)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"{folder}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    return model, tokenizer
