"""Each S3 strategy does exactly what it says: which parameters train, how many layers are
left, how many heads each layer keeps, and by how many parameters the model shrinks."""
import copy

import pytest
import torch

from workloads.models import strategies as S
from workloads.models.encoders import load_sequence_classifier, load_tokenizer


@pytest.fixture
def model(tiny_bert_12):
    return load_sequence_classifier(tiny_bert_12, num_labels=3)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def n_trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_full_trains_everything(model):
    S.apply_strategy(model, "full")
    assert n_trainable(model) == n_params(model)


def test_freeze_first_9(model):
    info = S.apply_strategy(model, "freeze_first", layers=9)
    layers = S.encoder_layers(model)
    assert info["layers_frozen"] == 9
    assert all(not p.requires_grad for layer in layers[:9] for p in layer.parameters())
    assert all(p.requires_grad for layer in layers[9:] for p in layer.parameters())
    assert all(p.requires_grad for p in model.bert.embeddings.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert n_trainable(model) == n_params(model) - sum(n_params(layer) for layer in layers[:9])


def test_freeze_all_but_last_and_embeddings(model):
    S.apply_strategy(model, "freeze_all_but_last")
    layers = S.encoder_layers(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("bert.embeddings.", "bert.encoder.layer.11.", "classifier."))}
    assert trainable == expected
    assert n_trainable(model) == (n_params(model.bert.embeddings) + n_params(layers[-1]) + n_params(model.classifier))


def test_keep_first_9_deletes_the_rest(model, tiny_bert_12):
    per_layer = n_params(S.encoder_layers(model)[0])
    before = n_params(model)
    info = S.apply_strategy(model, "keep_first", layers=9)
    assert info == {"strategy": "keep_first", "layers_kept": 9, "layers_before": 12}
    assert len(S.encoder_layers(model)) == 9 and model.config.num_hidden_layers == 9
    assert before - n_params(model) == 3 * per_layer
    tok = load_tokenizer(tiny_bert_12)
    out = model(**tok(["سلام"], return_tensors="pt"), output_hidden_states=True)
    assert len(out.hidden_states) == 10  # embeddings + 9 layers


def test_layer_counts_scale_with_depth():
    assert S.scale_layers(9, 12) == 9
    assert S.scale_layers(9, 6) == 5  # 4.5, rounded half up
    assert S.scale_layers(9, 24) == 18
    assert S.scale_layers(9, 2) == 2


def _zero_heads_hook(heads, head_dim):
    def hook(module, inputs, output):
        ctx = output[0].clone()
        for h in heads:
            ctx[..., h * head_dim:(h + 1) * head_dim] = 0
        return (ctx, *output[1:])
    return hook


def test_prune_heads_is_structural_and_exact(model, tiny_bert_12):
    torch.manual_seed(0)
    for p in model.parameters():  # weights large enough that every head matters
        torch.nn.init.normal_(p, std=0.3)
    model.eval()
    original = copy.deepcopy(model)
    hidden, heads = model.config.hidden_size, model.config.num_attention_heads
    head_dim = hidden // heads
    before = n_params(model)

    info = S.apply_strategy(model, "prune_heads", prune_fraction=0.5, seed=7)
    chosen = info["heads_pruned"]
    assert all(len(h) == 2 and len(set(h)) == 2 for h in chosen.values())
    assert len({tuple(h) for h in chosen.values()}) > 1  # drawn per layer, not one pattern for all
    for layer in S.encoder_layers(model):
        attn = layer.attention
        assert attn.self.num_attention_heads == 2
        assert attn.self.query.out_features == attn.self.key.out_features == attn.self.value.out_features == 2 * head_dim
        assert attn.output.dense.in_features == 2 * head_dim
    assert before - n_params(model) == S.head_pruning_param_drop(hidden, head_dim, [2] * 12)

    tok = load_tokenizer(tiny_bert_12)
    batch = tok(["سلام دنیا", "کتاب خوب است"], padding=True, return_tensors="pt")
    with torch.no_grad():
        unpruned = original(**batch).logits
        for i, layer in enumerate(S.encoder_layers(original)):
            layer.attention.self.register_forward_hook(_zero_heads_hook(chosen[i], head_dim))
        zeroed = original(**batch).logits
        pruned = model(**batch).logits
    torch.testing.assert_close(pruned, zeroed, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(pruned, unpruned, atol=1e-3)  # the heads did matter


def test_head_choice_is_seeded():
    a = S.choose_heads_to_prune(12, 12, 0.5, seed=1)
    assert a == S.choose_heads_to_prune(12, 12, 0.5, seed=1)
    assert a != S.choose_heads_to_prune(12, 12, 0.5, seed=2)
    assert all(len(h) == 6 for h in a.values())
    assert all(len(h) == 9 for h in S.choose_heads_to_prune(12, 12, 0.75, seed=1).values())
    with pytest.raises(ValueError):
        S.choose_heads_to_prune(12, 12, 1.0, seed=1)


def test_unknown_strategy_is_a_clear_error(model):
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        S.apply_strategy(model, "nope")
