"""A CUDA-graphed training step trains exactly as the eager one: same losses step by step,
same weights after, with a learning-rate schedule and gradient clipping, across batches of
different widths (one capture each). Needs a GPU; on a machine without one it is skipped
(run it there with `python -m pytest --noconftest tests/test_cuda_graphs.py`)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _train(graphs: bool, batches, device):
    from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup

    from workloads import bert_nli
    from workloads.core.graphs import GraphedTrainStep
    from workloads.core.loop import LocalSession, TrainSetup, run_epoch

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3, device=device), fused=True, capturable=True)
    sched = get_linear_schedule_with_warmup(opt, 4, 3 * len(batches))
    setup = TrainSetup(model=model, optimizer=opt, scheduler=sched, loaders={}, step=bert_nli._step,
                       class_names=["e", "c", "n"], epochs=3, grad_clip=0.5,
                       train_step=GraphedTrainStep(model, opt, bert_nli._step, device, 0.5) if graphs else None)
    losses = [run_epoch(setup, model, batches, device, True, LocalSession(quiet=True), epoch=e)["loss"]
              for e in (1, 2, 3)]
    return losses, {k: v.detach().cpu() for k, v in model.state_dict().items()}, setup.train_step


def test_graphed_step_matches_eager():
    from workloads.bench_gpu import s3_batches

    device = torch.device("cuda")
    batches = s3_batches(8, 8, 500, seed=1, max_length=128, pad_multiple=32)
    assert len({b["input_ids"].shape for b in batches}) >= 2  # several captures
    eager_losses, eager_weights, _ = _train(False, batches, device)
    graph_losses, graph_weights, graphed = _train(True, batches, device)
    assert len(graphed.graphs) >= 2 and graphed.eager_steps == 0
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4)
    assert eager_losses[-1] < eager_losses[0]  # it trained
    worst = max(float((graph_weights[k] - eager_weights[k]).abs().max()) for k in eager_weights)
    assert worst < 1e-4, worst


def _fer_data(n_per_class=40, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(7), [n_per_class * (1 + c % 3) for c in range(7)])
    images = rng.integers(0, 256, size=(len(labels), 48, 48), dtype=np.uint8)
    images[np.arange(len(labels)), labels * 6, :] = 255  # a learnable mark per class
    return {s: (images, labels) for s in ("train", "val", "test")}


def _fer_config(**kw):
    return {"architecture": "basic_cnn", "dropout": 0.0, "imbalance": "upsample", "batch_size": 64, "seed": 0,
            "lr": 1e-3, "epochs": 2, "arm": "basic_cnn", "dataset_fingerprint": "random", **kw}


def test_fer_graphed_epochs_match_eager():
    from workloads import fer
    from workloads.core.loop import LocalSession, run_epoch

    device, data = torch.device("cuda"), _fer_data()
    losses = {}
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = True, False  # same kernels both ways
    try:
        for graphs in (False, True):
            torch.manual_seed(0)
            setup = fer.build_setup(_fer_config(precision="fp32", cuda_graphs=graphs), data, device)
            assert (setup.train_step is not None) == graphs
            losses[graphs] = [run_epoch(setup, setup.model, setup.loaders["train"], device, True,
                                        LocalSession(quiet=True), epoch=e)["loss"] for e in (1, 2, 3)]
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = flags
    print("eager", losses[False], "graphs", losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=1e-3), losses
    assert losses[True][-1] < losses[True][0]


def test_fer_trial_on_the_gpu_picks_its_precision_and_trains(tmp_path):
    from workloads import fer
    from workloads.core.loop import LocalSession, fit

    setup = fer.build_setup(_fer_config(precision="auto"), _fer_data(), torch.device("cuda"))
    assert setup.info["precision"] in ("fp32", "bf16") and setup.info["cuda_graphs"] is True
    assert setup.info["step_ms_fp32"] > 0 and setup.info["step_ms_bf16"] > 0
    session = LocalSession(checkpoint_dir=str(tmp_path / "ckpt"), quiet=True)
    fit(_fer_config(precision="auto"), setup, None, "gpu trial", session)
    assert [r["epoch"] for r in session.reports] == [1, 2]
    assert session.reports[-1]["train_loss"] < session.reports[0]["train_loss"]


def test_fusion_graphed_epochs_match_eager():
    """S1's step (cached states, encoder tops, fusion head, two learning rates) graphed as
    meld_fusion runs it on a GPU: the same losses as eager, with dropout off."""
    from workloads.bench_gpu import s1_setup
    from workloads.core.loop import LocalSession, run_epoch

    device = torch.device("cuda")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        losses = {}
        for graphs in (False, True):
            setup, loader = s1_setup("cross_attention", 8, device, graphs=graphs, dropout=0.0, n_batches=6)
            assert (setup.train_step is not None) == graphs
            if not graphs:  # the same padded batches both ways: padding is masked, but keep the inputs equal
                _, loader = s1_setup("cross_attention", 8, device, graphs=True, dropout=0.0, n_batches=6)
            losses[graphs] = [run_epoch(setup, setup.model, loader, device, True, LocalSession(quiet=True),
                                        epoch=e)["loss"] for e in (1, 2, 3)]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    print("eager", losses[False], "graphs", losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=1e-4), losses
    assert losses[True][-1] < losses[True][0]
