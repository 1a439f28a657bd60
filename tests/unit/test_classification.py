"""The classifier, the synthetic classification task, and the classification data machinery."""

from __future__ import annotations

import random
import re

import pytest
import torch
import torch.nn.functional as F

from prunelab.criteria.heads import head_importance
from prunelab.data.classification import CLS, SyntheticClassificationDataModule, _label_order
from prunelab.data.sources.synthetic import NegationScopeTask, bag_of_words
from prunelab.data.tokenizer import EOS
from prunelab.errors import UserError
from prunelab.models import build_classifier
from prunelab.models.addressing import attention_names, component_names


def test_every_input_has_the_same_bag_of_words_under_both_labels() -> None:
    """Moving the "not" to the other clause flips the label and leaves the bag of words unchanged."""
    task = NegationScopeTask(seed=3)
    rng = random.Random(0)
    for _ in range(200):
        text, label = task.example(rng)
        words = text.split()
        assert words.count("not") == 1 and label in ("negated", "affirmed")
        q = words[-1]
        clause_of_not = words[: words.index("not")]
        negated_noun = [w for w in clause_of_not if w in task.nouns][-1]
        assert (label == "negated") == (negated_noun == q)


def test_bag_of_words_is_at_chance_while_word_order_solves_it() -> None:
    dm = SyntheticClassificationDataModule(seed=1, train_size=4000, valid_size=10, test_size=1000)
    tr_x, tr_y = dm.read_split("train")
    te_x, te_y = dm.read_split("test")
    vocab = {w: i for i, w in enumerate(sorted(dm.task.vocabulary()))}
    xs, xt = bag_of_words(tr_x, vocab), bag_of_words(te_x, vocab)
    ys = torch.tensor([y == "negated" for y in tr_y], dtype=torch.float)
    yt = torch.tensor([y == "negated" for y in te_y], dtype=torch.float)
    w = torch.zeros(len(vocab), requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(300):  # logistic regression on word counts, trained to convergence
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(xs @ w + b, ys).backward()
        opt.step()
    train_acc = float(((xs @ w + b > 0).float() == ys).float().mean())
    test_acc = float(((xt @ w + b > 0).float() == yt).float().mean())
    assert abs(test_acc - 0.5) < 0.06, test_acc  # chance: 1000 test examples, 3 standard errors
    assert train_acc < 0.6
    # the information is there for a model that sees order: the clause holding "not" and the query
    rule = [
        ([w for w in t.split()[: t.split().index("not")] if w in dm.task.nouns][-1] == t.split()[-1])
        == (y == "negated")
        for t, y in zip(te_x, te_y, strict=True)
    ]
    assert all(rule)


def test_datamodule_labels_cls_and_unknown_labels() -> None:
    dm = SyntheticClassificationDataModule(seed=0, train_size=50, valid_size=5, test_size=5)
    dm.setup()
    assert dm.labels == ["affirmed", "negated"] and dm.num_classes == 2
    ids, label, name, idx, types = dm.examples["train"][0]
    assert types is None
    assert ids[0] == CLS and ids[-1] == EOS and dm.labels[label] == name and idx == 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["src"][:, 0].eq(CLS).all() and batch["label"].dtype == torch.long
    bad = SyntheticClassificationDataModule(seed=0, train_size=50, valid_size=5, test_size=5)
    original = bad.read_split
    bad.read_split = lambda split: (  # type: ignore[method-assign]
        (original(split)[0], ["maybe"] * 5) if split == "test" else original(split)
    )
    message = (
        "the test split, example 1: label 'maybe' is not among the training labels (affirmed, negated) "
        "(4 more with labels not seen in training)"
    )
    with pytest.raises(UserError, match=re.escape(message)):
        bad.setup()
    assert sorted(["10", "2", "b", "a"], key=_label_order) == ["2", "10", "a", "b"]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_shapes_addresses_and_padding(pooling: str) -> None:
    torch.manual_seed(0)
    m = build_classifier(num_classes=3, pooling=pooling, vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=2)
    m.eval()
    src = torch.tensor([[CLS, 5, 6, 7, EOS], [CLS, 8, EOS, 0, 0]])
    out = m(src)
    assert out.shape == (2, 3)
    alone = m(src[1:, :3])  # padding does not change the prediction
    assert torch.allclose(out[1], alone[0], atol=1e-5)
    assert component_names(m) == ["enc.0.sa", "enc.0.ff", "enc.1.sa", "enc.1.ff"]
    assert attention_names(m) == ["enc.0.sa", "enc.1.sa"]
    labels = torch.tensor([0, 2])
    losses = m.example_losses({"src": src, "label": labels})
    assert torch.allclose(losses, F.cross_entropy(out, labels, reduction="none"))


def test_head_importance_on_the_classifier_matches_finite_differences() -> None:
    torch.manual_seed(0)
    m = build_classifier(num_classes=2, vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=1).double().eval()
    batch = {"src": torch.tensor([[CLS, 5, 6, EOS], [CLS, 9, 4, EOS]]), "label": torch.tensor([1, 0])}
    scores = head_importance(m, [batch], normalize=False)
    eps = 1e-6
    g = m.enc[0].sa.head_gate
    for h in range(2):
        with torch.no_grad():
            g[h] = 1 + eps
            up = m.example_losses(batch)
            g[h] = 1 - eps
            down = m.example_losses(batch)
            g[h] = 1.0
        fd = float(((up - down) / (2 * eps)).abs().mean())
        assert float(scores["enc.0.sa"][h]) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_the_task_passes_the_batch_token_types_to_the_model() -> None:
    """A sentence-pair batch may carry token types (BERT's segment ids): the loss is the model's on them."""
    import torch.nn.functional as F

    from prunelab.models import build_classifier
    from prunelab.pruning import NoPruner
    from prunelab.tasks import ClassificationTask

    torch.manual_seed(0)
    model = build_classifier(
        num_classes=2, vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=1, type_vocab_size=2
    )
    task = ClassificationTask(model, NoPruner(), labels=["a", "b"], label_smoothing=0.0).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"src": torch.randint(4, 30, (3, 6), generator=g), "label": torch.tensor([0, 1, 1])}
    types = torch.zeros(3, 6, dtype=torch.long)
    types[:, 3:] = 1
    with torch.no_grad():
        expected = F.cross_entropy(model(batch["src"], types=types), batch["label"])
        assert torch.allclose(task.loss({**batch, "types": types}), expected)
        assert not torch.allclose(task.loss(batch), expected)  # without types: all type 0, another loss
