"""Word attributions of a BERT classifier: captum LayerIntegratedGradients on the embedding layer, summed over
the hidden size per token, then word pieces combined per word.

The baseline is the sentence with every word piece replaced by [PAD] while [CLS], [SEP], the positions and the
attention mask stay: IG then integrates along the straight path between the two embedding-layer outputs, and
by completeness the attributions of a sentence's words add up to logit_target(sentence) − logit_target(baseline)
(up to the integral's discretisation error, reported per sentence as captum's convergence delta).
"""
from dataclasses import dataclass

import torch
from captum.attr import LayerIntegratedGradients
from tqdm.auto import tqdm

from .tokenizer import encode_sentences

AGGREGATIONS = ("sum", "mean")


@dataclass
class WordAttributions:
    """Per sentence: `words[i]` float64 tensor (num_words,), plus logits (N, C) of the unmodified sentences, the
    targets attributed to, and captum's convergence deltas (N,) (sum of attributions minus the logit gap)."""

    words: list
    logits: torch.Tensor
    targets: torch.Tensor
    deltas: torch.Tensor

    @property
    def predictions(self):
        return self.logits.argmax(dim=1)


def aggregate_word_pieces(token_scores, word_ids, num_words, how="sum"):
    """Combine per-token scores (L,) into per-word scores (num_words,) using the tokenizer's `word_ids` (one per
    token, None for special tokens and padding): "sum" (which keeps IG's completeness) or "mean" of the word's
    pieces. Every word must own at least one piece."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
    if token_scores.dim() != 1 or len(word_ids) != token_scores.shape[0]:
        raise ValueError(f"token_scores must be (L,) with one word id per token, got shape "
                         f"{tuple(token_scores.shape)} and {len(word_ids)} word ids")
    positions = [t for t, w in enumerate(word_ids) if w is not None]
    index = torch.tensor([word_ids[t] for t in positions], dtype=torch.long)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_words):
        raise ValueError(f"word ids range over {int(index.min())}..{int(index.max())}, expected 0..{num_words - 1}")
    totals = torch.zeros(num_words, dtype=token_scores.dtype, device=token_scores.device)
    totals.index_add_(0, index.to(token_scores.device), token_scores[positions])
    counts = torch.bincount(index, minlength=num_words)
    if num_words and int(counts.min()) == 0:
        raise ValueError(f"word {int((counts == 0).nonzero()[0])} has no word piece (the tokenizer dropped it); "
                         "cannot attribute to it")
    return totals if how == "sum" else totals / counts.to(totals)


def pad_baseline(input_ids, word_ids, pad_token_id):
    """input_ids with every word piece replaced by [PAD]; special tokens and padding unchanged."""
    baseline = input_ids.clone()
    for row, ids in enumerate(word_ids):
        pieces = [t for t, w in enumerate(ids) if w is not None]
        baseline[row, pieces] = pad_token_id
    return baseline


def embedding_layer(model):
    """The module whose output LayerIG attributes to: BERT's embeddings (word + position + type, LayerNorm)."""
    embeddings = getattr(model.base_model, "embeddings", None)
    if embeddings is None:
        raise ValueError(f"{type(model).__name__} has no base_model.embeddings; expected a BERT-style classifier")
    return embeddings


def attribute_words(model, tokenizer, examples, targets=None, n_steps=50, internal_batch_size=64, batch_size=16,
                    aggregate="sum", device="cpu", progress=True):
    """LayerIntegratedGradients word attributions for `examples` (SSTExamples) toward `targets` (class indices;
    default the true labels, which the protocol uses since it scores correctly classified sentences only).

    Sentences go through captum `batch_size` at a time; `internal_batch_size` bounds how many of the
    batch_size * n_steps interpolated inputs one forward pass holds."""
    if not examples:
        raise ValueError("attribute_words got no examples")
    targets = torch.as_tensor([e.label for e in examples] if targets is None else targets, dtype=torch.long)
    if targets.shape != (len(examples),):
        raise ValueError(f"targets must hold one class per example ({len(examples)}), got shape {tuple(targets.shape)}")
    num_labels = model.config.num_labels
    if int(targets.min()) < 0 or int(targets.max()) >= num_labels:
        raise ValueError(f"targets range over {int(targets.min())}..{int(targets.max())}, but the model has "
                         f"{num_labels} classes")
    model = model.to(device).eval()

    def logits_of(input_ids, attention_mask, token_type_ids):
        return model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    integrated_gradients = LayerIntegratedGradients(logits_of, embedding_layer(model))
    words, logits, deltas = [], [], []
    for start in tqdm(range(0, len(examples), batch_size), desc="attributions", unit="batch", disable=not progress):
        chunk = examples[start:start + batch_size]
        batch, word_ids = encode_sentences(tokenizer, [e.words for e in chunk], model.config.max_position_embeddings)
        batch = {k: v.to(device) for k, v in batch.items()}
        baseline = pad_baseline(batch["input_ids"], word_ids, tokenizer.pad_token_id)
        chunk_targets = targets[start:start + batch_size].to(device)
        with torch.no_grad():
            logits.append(logits_of(**batch).float().cpu())
        token_attributions, delta = integrated_gradients.attribute(
            inputs=batch["input_ids"], baselines=baseline,
            additional_forward_args=(batch["attention_mask"], batch["token_type_ids"]),
            target=chunk_targets, n_steps=n_steps, internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
        token_scores = token_attributions.sum(dim=-1).double().cpu()
        for row, example in enumerate(chunk):
            words.append(aggregate_word_pieces(token_scores[row], word_ids[row], len(example.words), aggregate))
        deltas.append(delta.double().cpu())
    return WordAttributions(words=words, logits=torch.cat(logits), targets=targets, deltas=torch.cat(deltas))
