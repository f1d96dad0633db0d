import json

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from kdfast.nlp.models import (
    TRAINING_INFO, bert_config, load_checkpoint, load_tokenizer, new_classifier, save_checkpoint, student_from_teacher,
)
from kdfast.nlp.sst import SSTExample
from kdfast.nlp.tokenizer import encode_sentences, train_wordpiece_tokenizer
from kdfast.nlp.train import TrainConfig, predict_logits, train_classifier


pytestmark = pytest.mark.usefixtures("one_thread")


WORDS = {0: ("awful", "dreadful"), 1: ("dull", "flat"), 2: ("good", "nice"), 3: ("superb", "brilliant")}


def _examples(count, seed):
    """Sentences whose class is given by one keyword: easy to learn in a few steps."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        label = int(torch.randint(4, (1,), generator=g))
        word = WORDS[label][int(torch.randint(2, (1,), generator=g))]
        out.append(SSTExample(words=("the", "film", "is", word, "."), word_labels=(2, 2, 2, 2, 2), label=label,
                              fine_label=(0, 1, 3, 4)[label]))
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer([e.words for e in _examples(64, 0)], vocab_size=60)


def _tiny(tokenizer, layers=2, seed=0):
    config = bert_config(len(tokenizer), num_labels=4, num_layers=layers, hidden_size=16, num_heads=2,
                         intermediate_size=32, max_position=16)
    return new_classifier(config, seed=seed)


def test_tokenizer_is_deterministic_and_round_trips(tmp_path):
    sentences = [e.words for e in _examples(64, 1)] + [("unwatchable", "-", "ish", "(", "sort", "of", ")")]
    first = train_wordpiece_tokenizer(sentences, vocab_size=45)
    second = train_wordpiece_tokenizer(sentences, vocab_size=45)
    assert first.get_vocab() == second.get_vocab()
    assert [first.pad_token_id, first.unk_token_id, first.cls_token_id, first.sep_token_id] == [0, 1, 2, 3]
    batch, word_ids = encode_sentences(first, [("The", "unwatchable", "film"), ("good",)], max_length=32)
    assert word_ids[0][0] is None and sorted(set(word_ids[0][1:-1])) == [0, 1, 2] and word_ids[0][-1] is None
    assert word_ids[1][0] is None and set(word_ids[1][1:]) <= {0, None}
    assert first.unk_token_id not in batch["input_ids"].tolist()[0]
    first.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path)).get_vocab() == first.get_vocab()


def test_tokenizer_errors(tokenizer):
    with pytest.raises(ValueError, match="at least one sentence"):
        train_wordpiece_tokenizer([])
    with pytest.raises(ValueError, match="vocab_size must exceed"):
        train_wordpiece_tokenizer([("a",)], vocab_size=5)
    with pytest.raises(ValueError, match="sentence 1 has no words"):
        encode_sentences(tokenizer, [("good",), ()], max_length=16)
    with pytest.raises(ValueError, match="more than max_length=4"):
        encode_sentences(tokenizer, [("the", "film", "is", "good")], max_length=4)


def test_config_checks():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        bert_config(100, 4, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        bert_config(100, 4, num_layers=0)
    config = bert_config(100, 4, num_layers=12, hidden_size=768, num_heads=12)
    assert (config.num_hidden_layers, config.intermediate_size, config.num_labels) == (12, 3072, 4)


def test_student_from_teacher_copies_lower_layers(tokenizer):
    teacher = _tiny(tokenizer, layers=3, seed=1)
    student = student_from_teacher(teacher, 2, copy_weights=True, seed=5)
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 3
    teacher_state = teacher.state_dict()
    for key, value in student.state_dict().items():
        assert torch.equal(value, teacher_state[key]), key
    random = student_from_teacher(teacher, 2, copy_weights=False, seed=5)
    assert not torch.equal(random.bert.encoder.layer[0].attention.self.query.weight,
                           teacher.bert.encoder.layer[0].attention.self.query.weight)
    with pytest.raises(ValueError, match=r"must be in 1..3"):
        student_from_teacher(teacher, 4)


def test_checkpoint_round_trip(tmp_path, tokenizer):
    model = _tiny(tokenizer).eval()
    examples = _examples(6, 2)
    save_checkpoint(str(tmp_path / "ckpt"), model, tokenizer, info={"note": 1})
    loaded, loaded_tokenizer = load_checkpoint(str(tmp_path / "ckpt"), num_labels=4)
    torch.testing.assert_close(predict_logits(loaded, loaded_tokenizer, examples),
                               predict_logits(model, tokenizer, examples), rtol=0, atol=0)
    assert json.loads((tmp_path / "ckpt" / TRAINING_INFO).read_text()) == {"note": 1}
    with pytest.raises(ValueError, match="4-class model, expected 2 classes"):
        load_checkpoint(str(tmp_path / "ckpt"), num_labels=2)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_checkpoint(str(tmp_path / "missing"))


def test_pretrained_encoder_folder_needs_a_new_head(tmp_path, tokenizer):
    """A folder like bert-base-uncased on disk: an encoder without a classifier, with vocab.txt."""
    folder = tmp_path / "encoder"
    encoder = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=32, max_position_embeddings=16))
    encoder.save_pretrained(folder)
    vocab = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    with pytest.raises(ValueError, match="not a trained BertForSequenceClassification"):
        load_checkpoint(str(folder), num_labels=4)
    model, loaded_tokenizer = load_checkpoint(str(folder), num_labels=4, new_head=True)
    assert model.config.num_labels == 4 and loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
    (folder / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_checkpoint(str(folder), num_labels=4, new_head=True)


def test_scratch_training_learns_and_checkpoints(tmp_path, tokenizer):
    train, dev = _examples(64, 3), _examples(32, 4)
    model = _tiny(tokenizer)
    config = TrainConfig(epochs=30, batch_size=8, lr=3e-3, warmup=0.0, seed=0)
    history = train_classifier(model, tokenizer, train, config, dev_examples=dev, checkpoint_dir=str(tmp_path / "s"))
    assert [r["epoch"] for r in history] == list(range(1, 31))
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["dev_acc"] >= 0.9
    info = json.loads((tmp_path / "s" / TRAINING_INFO).read_text())
    assert info["distilled"] is False and info["history"] == history
    loaded, _ = load_checkpoint(str(tmp_path / "s"), num_labels=4)
    torch.testing.assert_close(predict_logits(loaded, tokenizer, dev), predict_logits(model, tokenizer, dev))


def _one_step_loss(tokenizer, examples, teacher, alpha, temperature):
    """The loss of a first training step recomputed directly: (1 − α)·CE + α·T²·KL(p_t(T) ‖ p_s(T))."""
    student = _tiny(tokenizer, layers=1, seed=7)
    student.config.hidden_dropout_prob = 0.0
    batch, _ = encode_sentences(tokenizer, [e.words for e in examples], max_length=16)
    with torch.no_grad():
        z_s = student.eval()(**batch).logits.double()
        z_t = teacher.eval()(**batch).logits.double()
    y = torch.tensor([e.label for e in examples])
    p_t = F.softmax(z_t / temperature, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(z_s / temperature, 1))).sum(1).mean()
    return float((1 - alpha) * F.cross_entropy(z_s, y) + alpha * temperature**2 * kl)


def test_kd_training_uses_the_kd_loss(tokenizer):
    examples = _examples(8, 5)
    teacher = _tiny(tokenizer, layers=2, seed=3)
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-9, warmup=0.0, alpha=0.7, temperature=3.0)
    # Dropout off so that the logged training loss is the deterministic loss of the first step.
    student = student_from_teacher(teacher, 1, copy_weights=False, seed=7)
    for module in student.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    history = train_classifier(student, tokenizer, examples, config, teacher=teacher)
    expected = _one_step_loss(tokenizer, examples, teacher, 0.7, 3.0)
    assert history[0]["loss"] == pytest.approx(expected, rel=1e-4)


def test_kd_with_alpha_zero_equals_scratch(tokenizer):
    examples = _examples(24, 6)
    teacher = _tiny(tokenizer, layers=2, seed=3)
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-3, alpha=0.0)
    scratch = student_from_teacher(teacher, 1, copy_weights=False, seed=9)
    distilled = student_from_teacher(teacher, 1, copy_weights=False, seed=9)
    train_classifier(scratch, tokenizer, examples, config)
    train_classifier(distilled, tokenizer, examples, config, teacher=teacher)
    for (name, a), b in zip(scratch.state_dict().items(), distilled.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    kd = student_from_teacher(teacher, 1, copy_weights=False, seed=9)
    train_classifier(kd, tokenizer, examples, TrainConfig(epochs=2, batch_size=8, lr=1e-3, alpha=0.5), teacher=teacher)
    assert not torch.allclose(kd.classifier.weight, scratch.classifier.weight)


def test_training_errors(tokenizer):
    model = _tiny(tokenizer)
    with pytest.raises(ValueError, match="no training examples"):
        train_classifier(model, tokenizer, [], TrainConfig(epochs=1))
    bad = [SSTExample(words=("good",), word_labels=(3,), label=4, fine_label=4)]
    with pytest.raises(ValueError, match="model has 4 classes"):
        train_classifier(model, tokenizer, bad, TrainConfig(epochs=1))
    two_class = new_classifier(bert_config(len(tokenizer), 2, num_layers=1, hidden_size=16, max_position=16))
    with pytest.raises(ValueError, match="teacher has 2 classes, student 4"):
        train_classifier(model, tokenizer, _examples(4, 0), TrainConfig(epochs=1), teacher=two_class)
    for field, value in (("epochs", 0), ("alpha", 1.5), ("temperature", 0.0), ("lr", -1.0), ("warmup", 1.0)):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: value})
