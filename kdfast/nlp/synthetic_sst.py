"""A synthetic stand-in for SST: movie-review-like sentences built from a small sentiment lexicon, written as
SST PTB tree files so that the real reader and pipeline run on them unchanged.

Sentiment composes as in SST's phrase annotations, on values -2..2 (label = value + 2):
  * adjectives carry the lexical sentiment (good +1, brilliant +2, dull -1, awful -2); every other word is
    neutral, so word labels mark exactly the words an explanation should point at;
  * an intensifier makes the polarity strong ("very good" +2, "truly dull" -2);
  * a negator flips and weakens ("not good" -1, "not awful" +1);
  * "X but Y" takes Y's sentiment (so sentences contain words of the opposite polarity), "X and Y" adds the two
    clauses and clips to -2..2 (mixed clauses can cancel to a neutral root, which the 4-class mode drops).
`label_noise` moves that fraction of roots to the adjacent intensity (very negative <-> negative, positive <->
very positive), as SST's annotators disagree on intensity; it keeps a teacher below 100% and its soft labels
informative about class similarity, which is what KD transfers.
"""
import os
import random

from .sst import SPLITS, Tree, write_sst_file

STRONG_POSITIVE = ("brilliant", "masterful", "superb", "stunning", "wonderful", "exhilarating", "unforgettable",
                   "dazzling")
POSITIVE = ("good", "nice", "charming", "pleasant", "solid", "enjoyable", "likable", "decent", "funny", "sweet")
NEGATIVE = ("dull", "bland", "clumsy", "tedious", "flat", "messy", "predictable", "uneven", "silly", "sluggish")
STRONG_NEGATIVE = ("awful", "dreadful", "terrible", "unwatchable", "horrendous", "atrocious", "painful",
                   "worthless")
INTENSIFIERS = ("very", "truly", "remarkably", "utterly", "incredibly")
NEGATORS = ("not", "never", "hardly")
SUBJECTS = ("film", "movie", "story", "plot", "script", "cast", "acting", "ending", "soundtrack", "direction",
            "dialogue", "pacing", "screenplay", "performance", "premise")
DETERMINERS = ("the", "this", "its")
VERBS = ("is", "was", "feels", "seems")
OPENERS = (("overall", ","), ("honestly", ","), ("in", "the", "end", ","))
ASIDES = (("a", "remake"), ("again",), ("sort", "of"))

ADJECTIVES = {2: STRONG_POSITIVE, 1: POSITIVE, -1: NEGATIVE, -2: STRONG_NEGATIVE}


def _leaf(word, value=0):
    return Tree(label=value + 2, word=word)


def _node(value, *children):
    return Tree(label=value + 2, children=list(children))


def _chain(words):
    """Neutral right-branching phrase over `words` (SST trees are binary)."""
    tree = _leaf(words[-1])
    for word in reversed(words[:-1]):
        tree = _node(0, _leaf(word), tree)
    return tree


def _adjective_phrase(rng):
    value = rng.choice((2, 1, -1, -2))
    tree = _leaf(rng.choice(ADJECTIVES[value]), value)
    if rng.random() < 0.3:
        value = 2 if value > 0 else -2
        tree = _node(value, _leaf(rng.choice(INTENSIFIERS)), tree)
    if rng.random() < 0.25:
        value = -1 if value > 0 else 1
        tree = _node(value, _leaf(rng.choice(NEGATORS)), tree)
    return value, tree


def _clause(rng):
    """(value, tree) of "the <subject> [(aside)] <verb> <adjective phrase>"."""
    subject = _node(0, _leaf(rng.choice(DETERMINERS)), _leaf(rng.choice(SUBJECTS)))
    if rng.random() < 0.1:
        # A parenthetical puts escaped brackets (-LRB- ... -RRB-) into the files, as real SST has them.
        aside = _chain(("(",) + rng.choice(ASIDES) + (")",))
        subject = _node(0, subject, aside)
    value, adjective = _adjective_phrase(rng)
    predicate = _node(value, _leaf(rng.choice(VERBS)), adjective)
    return value, _node(value, subject, predicate)


def generate_tree(rng, label_noise=0.1):
    """One random sentence tree (see the module docstring for how its labels compose)."""
    value, tree = _clause(rng)
    form = rng.random()
    if form < 0.35:
        second_value, second = _clause(rng)
        value = second_value
        tree = _node(value, tree, _node(second_value, _leaf("but"), second))
    elif form < 0.6:
        second_value, second = _clause(rng)
        value = max(-2, min(2, value + second_value))
        tree = _node(value, tree, _node(second_value, _leaf("and"), second))
    if rng.random() < 0.2:
        tree = _node(value, _chain(rng.choice(OPENERS)), tree)
    tree = _node(value, tree, _leaf(rng.choice((".", ".", "!"))))
    if value != 0 and rng.random() < label_noise:
        tree.label = {0: 1, 1: 0, 3: 4, 4: 3}[tree.label]
    return tree


def generate_trees(count, seed=0, label_noise=0.1):
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    rng = random.Random(seed)
    return [generate_tree(rng, label_noise) for _ in range(count)]


def make_synthetic_sst(folder, sizes=(2000, 400, 400), seed=0, label_noise=0.1):
    """Write train.txt, dev.txt, test.txt (sizes in that order, each split with its own seed) into `folder`;
    returns {split: path}."""
    if len(sizes) != len(SPLITS):
        raise ValueError(f"sizes must give {len(SPLITS)} counts ({', '.join(SPLITS)}), got {sizes!r}")
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for offset, (split, count) in enumerate(zip(SPLITS, sizes)):
        paths[split] = os.path.join(folder, f"{split}.txt")
        write_sst_file(paths[split], generate_trees(count, seed=seed * len(SPLITS) + offset,
                                                    label_noise=label_noise))
    return paths
