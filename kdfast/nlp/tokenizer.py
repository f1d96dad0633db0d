"""WordPiece tokenizer built locally from the training sentences (no hub download), and batch encoding of
pre-split SST sentences that keeps track of which word every word piece came from."""
from tokenizers.implementations import BertWordPieceTokenizer
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from transformers import BertTokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece_tokenizer(sentences, vocab_size=8000, min_frequency=1, lowercase=True):
    """A BERT WordPiece tokenizer (transformers.BertTokenizer) whose vocabulary is learned from `sentences`
    (sequences of words). Special tokens come first, so [PAD] is id 0 as in BERT's own vocabulary."""
    sentences = [" ".join(words) for words in sentences]
    if not sentences:
        raise ValueError("train_wordpiece_tokenizer needs at least one sentence")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    trainer = BertWordPieceTokenizer(lowercase=lowercase)
    trainer.train_from_iterator(sentences, vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=list(SPECIAL_TOKENS) + _single_character_pieces(sentences, lowercase),
                                show_progress=False)
    return BertTokenizer(vocab=trainer.get_vocab(), do_lower_case=lowercase)


def _single_character_pieces(sentences, lowercase):
    """Every single-character piece ("c" word-initial, "##c" inside a word) of the corpus, sorted.

    The trainer creates "##c" pieces in hash-map order, and their ids break ties between equally frequent merges,
    so the learned vocabulary changes from run to run (huggingface/tokenizers#1794). Registering them up front, in
    sorted order, fixes their ids and makes training deterministic; they would all be in the vocabulary anyway."""
    normalizer = BertNormalizer(lowercase=lowercase)
    pre_tokenizer = BertPreTokenizer()
    words = {w for s in sentences for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(s))}
    return sorted({w[0] for w in words}) + sorted({"##" + c for w in words for c in w[1:]})


def encode_sentences(tokenizer, sentences, max_length):
    """Tokenize pre-split sentences into a padded batch ("input_ids", "attention_mask", "token_type_ids") and
    return it with each sentence's word id per token (None for [CLS], [SEP] and padding).

    Sentences are never truncated: one that needs more than `max_length` tokens is an error naming it, because
    dropping its tail would silently drop words from training and from the attribution scores."""
    sentences = [list(words) for words in sentences]
    if not sentences:
        raise ValueError("encode_sentences got no sentences")
    for i, words in enumerate(sentences):
        if not words:
            raise ValueError(f"sentence {i} has no words")
    batch = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt",
                      return_token_type_ids=True)
    if batch["input_ids"].shape[1] > max_length:
        lengths = batch["attention_mask"].sum(1)
        i = int(lengths.argmax())
        raise ValueError(f"sentence {i} ({' '.join(sentences[i])[:80]!r}...) has {int(lengths[i])} tokens, more "
                         f"than max_length={max_length} (the model's position embeddings); use a model with more "
                         "positions")
    word_ids = [batch.word_ids(i) for i in range(len(sentences))]
    return dict(batch), word_ids
