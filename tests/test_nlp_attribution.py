import pytest
import torch

from kdfast.nlp.attribution import aggregate_word_pieces, attribute_words, pad_baseline
from kdfast.nlp.models import bert_config, new_classifier
from kdfast.nlp.sst import SSTExample
from kdfast.nlp.tokenizer import encode_sentences, train_wordpiece_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


SENTENCES = [
    ("the", "film", "is", "not", "wonderful", "."),
    ("an", "unwatchable", "mess", "(", "sort", "of", ")", "!"),
    ("superb",),
    ("the", "screenplay", "feels", "remarkably", "sluggish", "but", "the", "cast", "is", "charming", "."),
]


def direct_aggregate(token_scores, word_ids, num_words, how):
    out = []
    for w in range(num_words):
        pieces = [float(token_scores[t]) for t, wid in enumerate(word_ids) if wid == w]
        out.append(sum(pieces) if how == "sum" else sum(pieces) / len(pieces))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("how", ["sum", "mean"])
def test_aggregate_word_pieces_against_direct_loop(gen, how):
    cases = [
        [None, 0, 0, 1, None],  # a split word and a whole word
        [None, 0, None],  # single word
        [None, 0, 1, 1, 1, 2, 3, 3, None, None, None],  # trailing padding
        [None] + [0] * 6 + [None],  # all pieces of one word
    ]
    for word_ids in cases:
        num_words = max(w for w in word_ids if w is not None) + 1
        scores = torch.randn(len(word_ids), generator=gen, dtype=torch.float64)
        got = aggregate_word_pieces(scores, word_ids, num_words, how)
        torch.testing.assert_close(got, direct_aggregate(scores, word_ids, num_words, how), rtol=0, atol=1e-12)


def test_aggregate_word_pieces_errors():
    scores = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="word 1 has no word piece"):
        aggregate_word_pieces(scores, [None, 0, 2, None], 3)
    with pytest.raises(ValueError, match="expected 0..1"):
        aggregate_word_pieces(scores, [None, 0, 2, None], 2)
    with pytest.raises(ValueError, match="one word id per token"):
        aggregate_word_pieces(scores, [None, 0, None], 1)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate_word_pieces(scores, [None, 0, 0, None], 1, how="max")


@pytest.fixture(scope="module")
def tokenizer():
    # A vocabulary too small to hold every word, so that some words are split into pieces.
    return train_wordpiece_tokenizer(SENTENCES * 3, vocab_size=90)


@pytest.fixture(scope="module")
def model(tokenizer):
    config = bert_config(len(tokenizer), num_labels=4, num_layers=2, hidden_size=16, num_heads=2, max_position=64,
                         dropout=0.0)
    config.initializer_range = 1.0  # large weights: logits far from the baseline's, a curved path for IG
    return new_classifier(config, seed=0).double().eval()


def _examples(labels=(0, 1, 2, 3)):
    return [SSTExample(words=s, word_labels=(2,) * len(s), label=y, fine_label=y) for s, y in zip(SENTENCES, labels)]


def test_words_are_split_into_pieces(tokenizer):
    _, word_ids = encode_sentences(tokenizer, SENTENCES, max_length=64)
    assert any(ids.count(w) > 1 for ids in word_ids for w in set(ids) if w is not None)


def test_pad_baseline_keeps_special_tokens_and_padding(tokenizer):
    batch, word_ids = encode_sentences(tokenizer, SENTENCES[:3], max_length=64)
    baseline = pad_baseline(batch["input_ids"], word_ids, tokenizer.pad_token_id)
    for row, ids in enumerate(word_ids):
        for t, w in enumerate(ids):
            expected = tokenizer.pad_token_id if w is not None else int(batch["input_ids"][row, t])
            assert int(baseline[row, t]) == expected
    assert (baseline == tokenizer.cls_token_id).sum() == 3 and (baseline == tokenizer.sep_token_id).sum() == 3


def test_completeness_word_attributions_sum_to_logit_gap(model, tokenizer):
    examples = _examples()
    result = attribute_words(model, tokenizer, examples, n_steps=300, internal_batch_size=500, batch_size=4,
                             progress=False)
    batch, word_ids = encode_sentences(tokenizer, [e.words for e in examples], max_length=64)
    baseline = pad_baseline(batch["input_ids"], word_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(**batch).logits
        baseline_logits = model(input_ids=baseline, attention_mask=batch["attention_mask"],
                                token_type_ids=batch["token_type_ids"]).logits
    targets = torch.tensor([e.label for e in examples])
    gap = (logits - baseline_logits).gather(1, targets[:, None])[:, 0]
    sums = torch.stack([w.sum() for w in result.words])
    assert gap.abs().min() > 0.1  # the check below is not trivially 0 ≈ 0
    torch.testing.assert_close(sums, gap, rtol=2e-3, atol=1e-4)
    torch.testing.assert_close(result.deltas, sums - gap, rtol=1e-6, atol=1e-9)
    assert [len(w) for w in result.words] == [len(e.words) for e in examples]
    torch.testing.assert_close(result.logits, logits.float())
    assert result.predictions.tolist() == logits.argmax(1).tolist()


def test_batching_and_internal_batch_size_do_not_change_attributions(model, tokenizer):
    examples = _examples()
    together = attribute_words(model, tokenizer, examples, n_steps=8, internal_batch_size=7, batch_size=4,
                               progress=False)
    alone = attribute_words(model, tokenizer, examples, n_steps=8, internal_batch_size=None, batch_size=1,
                            progress=False)
    for a, b in zip(together.words, alone.words):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_targets_choose_the_attributed_logit(model, tokenizer):
    examples = _examples()
    default = attribute_words(model, tokenizer, examples, n_steps=8, progress=False)
    shifted = attribute_words(model, tokenizer, examples, targets=[1, 2, 3, 0], n_steps=8, progress=False)
    assert default.targets.tolist() == [0, 1, 2, 3] and shifted.targets.tolist() == [1, 2, 3, 0]
    assert not torch.allclose(default.words[0], shifted.words[0])
    with pytest.raises(ValueError, match="model has 4 classes"):
        attribute_words(model, tokenizer, examples, targets=[0, 1, 2, 4], progress=False)
    with pytest.raises(ValueError, match="one class per example"):
        attribute_words(model, tokenizer, examples, targets=[0, 1], progress=False)
    with pytest.raises(ValueError, match="no examples"):
        attribute_words(model, tokenizer, [], progress=False)


def test_too_long_sentence_is_an_error(model, tokenizer):
    long = SSTExample(words=("the",) * 70, word_labels=(2,) * 70, label=0, fine_label=0)
    with pytest.raises(ValueError, match="more than max_length=64"):
        attribute_words(model, tokenizer, [long], progress=False)
