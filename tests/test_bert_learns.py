"""The BERT workload's wiring (labels, loss, optimizer, sampler) really learns: a tiny BERT
memorises a few dozen FarsTail pairs through the workload's own loaders, model builder, step
and the shared epoch function. (max_length is generous on purpose: FarsTail repeats each
premise for its e/c/n hypotheses, and character-level tokens truncated short make those
pairs identical with different labels.)"""
import torch

from workloads import bert_nli
from workloads.core.loop import LocalSession, TrainSetup, run_epoch
from workloads.data.farstail import LABEL_NAMES
from workloads.models.encoders import load_tokenizer, make_tiny_bert


def test_tiny_bert_memorises_farstail_pairs(tmp_path, farstail):
    path = make_tiny_bert(tmp_path / "tiny", list(farstail.items["text"].head(500)), layers=2, hidden=64, heads=4,
                          seed=0)
    config = {"model_path": path, "data_dir": None, "strategy": "full", "seed": 0, "dropout": 0.0,
              "train_size": 32, "val_size": 12, "test_size": 12, "batch_size": 8, "max_length": 192}
    loaders = bert_nli.build_loaders(config, load_tokenizer(path))
    model, _ = bert_nli.build_model(config)
    setup = TrainSetup(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=2e-3), loaders=loaders,
                       step=bert_nli._step, class_names=LABEL_NAMES, epochs=60)
    session, device = LocalSession(), torch.device("cpu")
    first = run_epoch(setup, model, loaders["train"], device, True, session, epoch=1)
    for epoch in range(2, setup.epochs + 1):
        last = run_epoch(setup, model, loaders["train"], device, True, session, epoch=epoch)
    assert first["acc"] < 0.6
    assert last["acc"] >= 0.9 and last["loss"] < first["loss"] / 2, (first, last)
    assert sorted(set(last["y_true"])) == [0, 1, 2]  # all three labels present and used


def test_length_buckets_change_padding_not_the_loss(tmp_path, farstail):
    """Bucketing regroups the same pairs into batches of similar length: every pair once per
    epoch, less padding, and the same per-pair losses (proof on the CPU for the GPU speed-up)."""
    path = make_tiny_bert(tmp_path / "tiny", list(farstail.items["text"].head(500)), layers=2, hidden=32, heads=2,
                          seed=0)
    base = {"model_path": path, "data_dir": None, "strategy": "full", "seed": 0, "dropout": 0.0,
            "train_size": 96, "val_size": 12, "test_size": 12, "batch_size": 8, "max_length": 128}
    tok = load_tokenizer(path)
    plain = bert_nli.build_loaders(base, tok)["train"]
    buckets = bert_nli.build_loaders({**base, "length_buckets": True}, tok)["train"]
    model, _ = bert_nli.build_model(base)
    model.eval()

    def per_pair(loader):
        losses, padded, real = {}, 0, 0
        for batch in loader:
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
            for ids, mask, y, value in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], loss):
                losses[(tuple(ids[mask.bool()].tolist()), int(y))] = float(value)  # truncation can repeat a pair
            padded += batch["attention_mask"].numel()
            real += int(batch["attention_mask"].sum())
        return losses, 1 - real / padded

    a, pad_plain = per_pair(plain)
    b, pad_buckets = per_pair(buckets)
    assert a.keys() == b.keys() and len(a) > 80
    assert max(abs(a[k] - b[k]) for k in a) < 1e-5
    assert pad_buckets < pad_plain / 2, (pad_plain, pad_buckets)
