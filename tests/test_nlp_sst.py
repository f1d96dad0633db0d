import random
import re

import pytest

from kdfast.nlp import synthetic_sst as syn
from kdfast.nlp.sst import (
    SSTFormatError, Tree, example_from_tree, parse_tree, polarity, read_sst_dir, read_sst_file, write_sst_file,
)

# The first sentence of SST's train.txt, abbreviated, plus escaped brackets and punctuation.
NESTED = "(3 (2 It) (4 (4 (2 's) (4 (3 (2 a) (4 (3 lovely) (2 film))) (2 .))) (2 !)))"
ESCAPED = "(1 (2 (2 -LRB-) (2 (2 sort) (2 (2 of) (2 -RRB-)))) (1 (2 1\\/2) (0 dreadful)))"


def test_parse_nested_tree_words_and_labels():
    tree = parse_tree(NESTED)
    assert tree.label == 3
    leaves = tree.leaves()
    assert [leaf.word for leaf in leaves] == ["It", "'s", "a", "lovely", "film", ".", "!"]
    assert [leaf.label for leaf in leaves] == [2, 2, 2, 3, 2, 2, 2]
    assert tree.children[1].children[0].label == 4


def test_parse_unescapes_brackets_and_slashes():
    tree = parse_tree(ESCAPED)
    assert [leaf.word for leaf in tree.leaves()] == ["(", "sort", "of", ")", "1/2", "dreadful"]
    assert [leaf.label for leaf in tree.leaves()] == [2, 2, 2, 2, 2, 0]


@pytest.mark.parametrize("line", [NESTED, "(4 (4 great))", "(0 (1 (2 not) (3 good)) (2 .))"])
def test_to_ptb_round_trips(line):
    assert parse_tree(line).to_ptb() == line


def test_to_ptb_escapes_brackets():
    tree = Tree(label=2, children=[Tree(label=2, word="("), Tree(label=3, word="fun"), Tree(label=2, word=")")])
    assert tree.to_ptb() == "(2 (2 -LRB-) (3 fun) (2 -RRB-))"
    assert [leaf.word for leaf in parse_tree(tree.to_ptb()).leaves()] == ["(", "fun", ")"]


def test_single_leaf_sentence():
    tree = parse_tree("(4 superb)")
    assert tree.is_leaf and tree.word == "superb" and tree.leaves() == [tree]


def test_deep_tree_does_not_recurse():
    depth = 3000
    line = "(3 " * depth + "(3 x)" + ")" * depth
    assert [leaf.word for leaf in parse_tree(line).leaves()] == ["x"]


@pytest.mark.parametrize("classes, expected", [
    (5, [(3, 3), (2, 2), (0, 0), (4, 4), (1, 1)]),
    (4, [(2, 3), (0, 0), (3, 4), (1, 1)]),
    (2, [(1, 3), (0, 0), (1, 4), (0, 1)]),
])
def test_class_modes(tmp_path, classes, expected):
    path = tmp_path / "train.txt"
    path.write_text("(3 (3 good) (2 film))\n(2 (2 a) (2 film))\n\n(0 awful)\n(4 (2 very) (4 great))\n(1 dull)\n")
    examples = read_sst_file(str(path), classes=classes)
    assert [(e.label, e.fine_label) for e in examples] == expected


def test_example_keeps_word_labels():
    example = example_from_tree(parse_tree("(1 (2 not) (3 good))"), classes=4)
    assert example.words == ("not", "good") and example.word_labels == (2, 3)
    assert example.label == 1 and example.fine_label == 1


def test_polarity():
    assert [polarity(s) for s in range(5)] == [-1, -1, 0, 1, 1]


@pytest.mark.parametrize("bad, message", [
    ("(3 (2 a) (3 good)", "unbalanced brackets, 1 '(' not closed"),
    ("(3 (2 a) (3 good)))", "column 19: unbalanced brackets, ')' without"),
    ("(3 (2 a) (5 good))", "column 11: label '5' out of range"),
    ("(3 (2 a) (-1 good))", "label '-1' out of range"),
    ("(x (2 a))", "label 'x' out of range"),
    ("(3 (2 a b))", "unexpected text 'b'"),
    ("(3 (2 a (2 b)))", "leaf 'a' has a child node"),
    ("(3 (2 a)) (2 b)", "after the tree's closing"),
    ("(3)", "neither a word nor children"),
    ("(3 ()", "must be followed by a label"),
    ("good film", "unexpected text 'good'"),
])
def test_bad_lines_name_file_and_line(tmp_path, bad, message):
    path = tmp_path / "dev.txt"
    path.write_text("(3 (3 good) (2 film))\n\n" + bad + "\n")
    with pytest.raises(SSTFormatError, match=f"dev.txt:3: .*{re.escape(message)}"):
        read_sst_file(str(path))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="classes must be one of"):
        read_sst_file(str(tmp_path / "x.txt"), classes=3)
    with pytest.raises(FileNotFoundError, match="x.txt"):
        read_sst_file(str(tmp_path / "x.txt"))
    (tmp_path / "train.txt").write_text("(3 good)\n")
    with pytest.raises(FileNotFoundError, match="lacks dev.txt, test.txt"):
        read_sst_dir(str(tmp_path))


def _sentence_value(words):
    """Independent string-level evaluation of the generator's composition rules (no trees involved)."""
    lexicon = {w: v for v, ws in syn.ADJECTIVES.items() for w in ws}
    clauses, joins, current = [], [], []
    for word in words:
        if word in ("but", "and"):
            clauses.append(current)
            joins.append(word)
            current = []
        else:
            current.append(word)
    clauses.append(current)
    values = []
    for clause in clauses:
        (position,) = [i for i, w in enumerate(clause) if w in lexicon]
        value = lexicon[clause[position]]
        before = clause[:position]
        if before and before[-1] in syn.INTENSIFIERS:
            value = 2 if value > 0 else -2
            before = before[:-1]
        if before and before[-1] in syn.NEGATORS:
            value = -1 if value > 0 else 1
        values.append(value)
    if not joins:
        return values[0]
    return values[1] if joins[0] == "but" else max(-2, min(2, values[0] + values[1]))


def test_synthetic_labels_follow_the_composition_rules():
    trees = syn.generate_trees(400, seed=3, label_noise=0.0)
    kinds = set()
    for tree in trees:
        words = [leaf.word for leaf in tree.leaves()]
        assert tree.label - 2 == _sentence_value(words), tree.to_ptb()
        lexicon = {w for ws in syn.ADJECTIVES.values() for w in ws}
        for leaf in tree.leaves():
            assert (leaf.label != 2) == (leaf.word in lexicon)
        kinds.update(w for w in words if w in ("but", "and", "(") + syn.NEGATORS + syn.INTENSIFIERS)
    # Every construction occurs.
    assert {"but", "and", "("} <= kinds and kinds & set(syn.NEGATORS) and kinds & set(syn.INTENSIFIERS)


def test_synthetic_label_noise_moves_to_adjacent_intensity():
    clean = syn.generate_trees(500, seed=1, label_noise=0.0)
    noisy = syn.generate_trees(500, seed=1, label_noise=0.3)
    changed = [(a.label, b.label) for a, b in zip(clean, noisy) if a.label != b.label]
    assert 0.15 * 500 < len(changed) < 0.45 * 500
    assert all({a, b} in ({0, 1}, {3, 4}) for a, b in changed)
    # The noise draw happens after the sentence is built, so the words are the same.
    assert all(a.leaves()[i].word == b.leaves()[i].word for a, b in zip(clean, noisy) for i in range(len(a.leaves())))


def test_make_synthetic_sst_round_trips_through_the_reader(tmp_path):
    paths = syn.make_synthetic_sst(str(tmp_path), sizes=(50, 20, 0), seed=5)
    splits = read_sst_dir(str(tmp_path), classes=5)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [50, 20, 0]
    again = syn.generate_trees(50, seed=15, label_noise=0.1)
    assert [e.words for e in splits["train"]] == [tuple(leaf.word for leaf in t.leaves()) for t in again]
    assert sorted(paths) == ["dev", "test", "train"]


def test_synthetic_is_deterministic_and_validates(tmp_path):
    assert [t.to_ptb() for t in syn.generate_trees(20, seed=7)] == [t.to_ptb() for t in syn.generate_trees(20, seed=7)]
    with pytest.raises(ValueError, match="label_noise"):
        syn.generate_trees(3, label_noise=1.5)
    with pytest.raises(ValueError, match="sizes must give 3"):
        syn.make_synthetic_sst(str(tmp_path), sizes=(1, 2))


def test_write_sst_file(tmp_path):
    trees = [parse_tree(NESTED), parse_tree(ESCAPED)]
    write_sst_file(str(tmp_path / "t.txt"), trees)
    assert [parse_tree(line).to_ptb() for line in (tmp_path / "t.txt").read_text().splitlines()] == \
        [t.to_ptb() for t in trees]
    rng = random.Random(0)
    assert syn.generate_tree(rng).leaves()
