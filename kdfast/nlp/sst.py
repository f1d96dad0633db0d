"""Stanford Sentiment Treebank (SST) reader for the PTB tree files (`train.txt`, `dev.txt`, `test.txt`).

Each line is one sentence as a binarised tree, e.g. `(3 (2 It) (4 (4 (2 's) (4 (3 (2 a) (4 (3 lovely) (2 film))))
...)))`: every node carries a sentiment label 0..4 (very negative .. very positive) and leaves are `(label word)`.
The sentence label is the root's, the word labels are the leaves'. Brackets inside the text are escaped
(`-LRB-`, `-RRB-`, ...), and are turned back into the characters here so that the tokenizer sees real text.
"""
import os
import re
from dataclasses import dataclass, field

NUM_SENTIMENTS = 5
NEUTRAL = 2

# Class modes: root sentiment -> class index. "4" drops neutral roots (the ICML 2023 setting, §5.4), "2" is
# SST-2 (neutral dropped, very/plain merged), "5" keeps the fine-grained labels as they are.
CLASS_MAPS = {
    5: {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
    4: {0: 0, 1: 1, 3: 2, 4: 3},
    2: {0: 0, 1: 0, 3: 1, 4: 1},
}
CLASS_NAMES = {
    5: ("very negative", "negative", "neutral", "positive", "very positive"),
    4: ("very negative", "negative", "positive", "very positive"),
    2: ("negative", "positive"),
}
SPLITS = ("train", "dev", "test")

# PTB escapes for characters that would clash with the tree syntax (and two the Penn tools also escape).
_UNESCAPE = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}
_ESCAPE = {char: escaped for escaped, char in _UNESCAPE.items()}
_TOKEN = re.compile(r"\(|\)|[^\s()]+")


class SSTFormatError(ValueError):
    """A tree file line that is not a well-formed SST tree; the message starts with `file:line:`."""


@dataclass
class Tree:
    """One node: a sentiment label and either children (phrase) or a word (leaf)."""

    label: int
    children: list = field(default_factory=list)
    word: str = None

    @property
    def is_leaf(self):
        return self.word is not None

    def leaves(self):
        """The leaves from left to right (iterative: real SST trees nest over 50 levels deep)."""
        out, stack = [], [self]
        while stack:
            node = stack.pop()
            if node.is_leaf:
                out.append(node)
            else:
                stack.extend(reversed(node.children))
        return out

    def to_ptb(self):
        """The PTB bracket string, escaping brackets in words, so that `parse_tree(t.to_ptb())` gives `t` back."""
        if self.is_leaf:
            return f"({self.label} {escape_word(self.word)})"
        return f"({self.label} " + " ".join(child.to_ptb() for child in self.children) + ")"


@dataclass(frozen=True)
class SSTExample:
    """A sentence: its words, each word's sentiment 0..4, the class index in the chosen class mode and the
    root sentiment 0..4 (`fine_label`, which fixes the sentence's polarity for the attribution scores)."""

    words: tuple
    word_labels: tuple
    label: int
    fine_label: int


def escape_word(word):
    return "".join(_ESCAPE.get(char, char) for char in word)


def unescape_word(word):
    return _UNESCAPE.get(word, word.replace("\\/", "/").replace("\\*", "*"))


def polarity(sentiment):
    """-1 for sentiment 0/1, 0 for neutral 2, +1 for 3/4."""
    return (sentiment > NEUTRAL) - (sentiment < NEUTRAL)


def parse_tree(line, where="<string>"):
    """Parse one PTB tree line into a Tree. `where` (e.g. "train.txt:12") prefixes every error message."""
    tokens = [(m.group(), m.start() + 1) for m in _TOKEN.finditer(line)]
    if not tokens:
        raise SSTFormatError(f"{where}: empty line, expected a tree '(label ...)'")
    stack, root = [], None
    i = 0
    while i < len(tokens):
        token, column = tokens[i]
        if root is not None:
            if token == ")":
                raise SSTFormatError(f"{where}: column {column}: unbalanced brackets, ')' without a matching '('")
            raise SSTFormatError(f"{where}: column {column}: text {token!r} after the tree's closing ')'")
        if token == "(":
            if i + 1 >= len(tokens) or tokens[i + 1][0] in "()":
                raise SSTFormatError(f"{where}: column {column}: '(' must be followed by a label 0..4")
            node = Tree(label=_parse_label(*tokens[i + 1], where))
            i += 2
            nxt = tokens[i][0] if i < len(tokens) else None
            if nxt is not None and nxt not in "()":
                node.word = unescape_word(nxt)
                i += 1
            if stack:
                if stack[-1].is_leaf:
                    raise SSTFormatError(f"{where}: column {column}: leaf {stack[-1].word!r} has a child node; a "
                                         "node holds either one word or child nodes")
                stack[-1].children.append(node)
            stack.append(node)
            continue
        if token == ")":
            if not stack:
                raise SSTFormatError(f"{where}: column {column}: unbalanced brackets, ')' without a matching '('")
            node = stack.pop()
            if not node.is_leaf and not node.children:
                raise SSTFormatError(f"{where}: column {column}: node with label {node.label} has neither a word "
                                     "nor children")
            if not stack:
                root = node
            i += 1
            continue
        raise SSTFormatError(f"{where}: column {column}: unexpected text {token!r}; a word must directly follow "
                             "its label inside a leaf '(label word)'")
    if stack:
        raise SSTFormatError(f"{where}: unbalanced brackets, {len(stack)} '(' not closed at the end of the line")
    return root


def _parse_label(token, column, where):
    if not token.isdigit() or int(token) >= NUM_SENTIMENTS:
        raise SSTFormatError(f"{where}: column {column}: label {token!r} out of range, expected an integer "
                             f"0..{NUM_SENTIMENTS - 1}")
    return int(token)


def check_classes(classes):
    if classes not in CLASS_MAPS:
        raise ValueError(f"classes must be one of {sorted(CLASS_MAPS)}, got {classes!r}")


def example_from_tree(tree, classes):
    """The SSTExample of a parsed tree, or None when the class mode excludes its root label (neutral roots in
    the 4- and 2-class modes)."""
    check_classes(classes)
    if tree.label not in CLASS_MAPS[classes]:
        return None
    leaves = tree.leaves()
    return SSTExample(
        words=tuple(leaf.word for leaf in leaves),
        word_labels=tuple(leaf.label for leaf in leaves),
        label=CLASS_MAPS[classes][tree.label],
        fine_label=tree.label,
    )


def read_sst_file(path, classes=4):
    """All sentences of one SST tree file in the given class mode (5, 4 or 2). Blank lines are allowed (they
    hold no sentence); anything malformed raises SSTFormatError naming `path:line`."""
    check_classes(classes)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SST tree file {path!r} does not exist")
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            example = example_from_tree(parse_tree(line, where=f"{path}:{lineno}"), classes)
            if example is not None:
                examples.append(example)
    return examples


def read_sst_dir(folder, classes=4, splits=SPLITS):
    """{split: examples} from `folder/<split>.txt` (the layout of the official `trees/` folder)."""
    missing = [s for s in splits if not os.path.isfile(os.path.join(folder, f"{s}.txt"))]
    if missing:
        raise FileNotFoundError(f"SST folder {folder!r} lacks " + ", ".join(f"{s}.txt" for s in missing)
                                + " (expected the PTB tree files train.txt, dev.txt, test.txt)")
    return {split: read_sst_file(os.path.join(folder, f"{split}.txt"), classes) for split in splits}


def write_sst_file(path, trees):
    """Write trees one per line in the PTB format read_sst_file reads."""
    with open(path, "w", encoding="utf-8") as f:
        for tree in trees:
            f.write(tree.to_ptb() + "\n")
