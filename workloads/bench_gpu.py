"""Each workload's real training step on generated data, timed: items/s, peak memory, and the
fraction of the device's peak arithmetic (MFU) where that peak is known.

Runs with PyTorch and transformers alone (no Ray, MLflow or Optuna), so it runs the same on
this laptop-class CPU and on a bare GPU box:

    python -m workloads.bench_gpu                         # every workload, 10 s each
    python -m workloads.bench_gpu --workloads s3 --batch 16,32 --seconds 20
    python -m workloads.bench_gpu --json out.json

S3 is multilingual-e5-small's shape with the vocabulary trimmed to FarsTail's 6,275 pieces
(24M parameters), random weights (speed does not depend on their values), pairs whose
lengths follow FarsTail's (median 74 pieces, capped at 128), the workload's own step and
optimizer through the shared epoch loop, eager and (on a GPU) as bert_nli runs there: one
CUDA graph per width padded to 32; `--model DIR` times a real folder instead. FER is the
four CNNs of S6 on 48×48 grey faces: the model-only ceiling (one batch on the device,
eager), and whole training epochs as fer.train runs them (a FER2013-sized up-sampled split
cut into batches on the device, eager or graphed, fp32 or bf16 + channels-last, and the
trial's default: precision chosen by a timed trial). S1 is the fusion trial's epoch on
cached prefix states (bench_s1), eager and graphed. S4 is the Attention_BLSTM on 157 × 46 frame features; S5
the AudioMNIST MLP (one hidden layer, real AudioMNIST's 101 frames × 36 MFCC + deltas in)
and the GTZAN CNN on 128 × 128 log-mel images. FLOPs are counted by torch's
FlopCounterMode on the step itself.

What it measured, dated, with the machine: docs/gpu.md.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from workloads.core.graphs import round_up

# Dense bf16 tensor-core peaks (FLOP/s), by device name. MFU is left out for anything else.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}


def device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, seconds: float, device: torch.device, items_per_step: int) -> dict:
    """Warm up, count FLOPs of one step, then run steps for `seconds`."""
    from torch.utils.flop_counter import FlopCounterMode

    step()
    step()  # allocations, autotuning
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        step()
        n += 1
    _sync(device)
    return _rates(items_per_step * n, n, flops / items_per_step, time.perf_counter() - start, device)


def _rates(items: int, steps: int, flops_per_item: float, elapsed: float, device: torch.device) -> dict:
    """A timed row: items/s, achieved TFLOP/s and its fraction of the device's peak, peak memory."""
    achieved = flops_per_item * items / elapsed
    peak = device_peak(device)
    return {"items_per_s": items / elapsed, "steps": steps, "flops_per_item": flops_per_item,
            "tflops": achieved / 1e12, "mfu": achieved / peak if peak else None,
            "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def s3_batches(batch: int, n_batches: int, vocab: int, seed: int = 0, max_length: int = 128, pad_multiple: int = 1):
    """Token batches with FarsTail-like pair lengths, padded to the longest in each batch
    (rounded up to `pad_multiple`), on the CPU as bert_nli's loader yields them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        lengths = (torch.randn(batch, generator=g) * 22 + 76).clamp(20, max_length).long()
        width = round_up(int(lengths.max()), pad_multiple)
        ids = torch.randint(5, vocab, (batch, width), generator=g)
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask + (1 - mask), "attention_mask": mask,
                    "labels": torch.randint(0, 3, (batch,), generator=g)})
    return out


def time_epochs(setup, loader, device: torch.device, seconds: float, items_per_step: int) -> dict:
    """The workload's real epoch loop (`run_epoch`, training) over `loader`: one warm-up epoch
    (allocations, autotuning, graph captures), whole epochs for `seconds`, then the FLOPs of
    one eager step counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from workloads.core.loop import LocalSession, run_epoch

    session = LocalSession(quiet=True)
    run_epoch(setup, setup.model, loader, device, True, session, epoch=1)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    items, epochs, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds or epochs < 2:
        items += run_epoch(setup, setup.model, loader, device, True, session, epoch=2 + epochs)["n"]
        epochs += 1
    elapsed = time.perf_counter() - start
    # FLOPs of one batch's forward and backward, eager; counted after the timing, since an eager
    # backward on the default stream before a capture would invalidate it (core/graphs.py)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _, _ = setup.step(setup.model, next(iter(loader)), device)
        loss.backward()
    setup.optimizer.zero_grad(set_to_none=True)
    return _rates(items, epochs * len(loader), counter.get_total_flops() / items_per_step, elapsed, device)


def bench_s3(batch: int, seconds: float, device: torch.device, model_dir: str | None, precision: str,
             graphs: bool = False) -> dict:
    """S3's training epoch: bert_nli's step through the shared loop (eager, or one CUDA graph
    per padded width as bert_nli runs on a GPU), on 32 batches of FarsTail-like pairs."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    from workloads import bert_nli
    from workloads.core.graphs import GraphedTrainStep, capturable, rate
    from workloads.core.loop import TrainSetup

    torch.manual_seed(0)
    if model_dir:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3, use_safetensors=True)
    else:  # e5-small's shape, FarsTail-trimmed vocabulary
        model = BertForSequenceClassification(BertConfig(
            vocab_size=6275, hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536,
            max_position_embeddings=512, num_labels=3, pad_token_id=1))
    model.to(device).train()
    graphs = graphs and device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=rate(3e-5, device), weight_decay=0.01,
                            **(capturable(device) or {"foreach": True}))  # as bert_nli builds it
    use_bf16 = precision == "bf16" and device.type == "cuda"

    def step(m, b, d):
        with torch.autocast(d.type, dtype=torch.bfloat16, enabled=use_bf16):
            return bert_nli._step(m, b, d)

    loader = s3_batches(batch, 32 if device.type == "cuda" else 4, model.config.vocab_size,
                        pad_multiple=32 if graphs else 1)
    setup = TrainSetup(model=model, optimizer=opt, loaders={}, step=step, class_names=["e", "c", "n"], epochs=1,
                       grad_clip=1.0, train_step=GraphedTrainStep(model, opt, step, device, 1.0) if graphs else None)
    params = sum(p.numel() for p in model.parameters())
    return {"workload": "s3", "model": (model_dir or "e5-small shape, random") + (", CUDA graphs" if graphs else ""),
            "batch": batch, "precision": "bf16" if use_bf16 else "fp32",
            "optimizer": "AdamW " + ("fused" if device.type == "cuda" else "foreach"),
            "params_m": params / 1e6, **time_epochs(setup, loader, device, seconds, batch)}


def bench_fer(arch: str, batch: int, seconds: float, device: torch.device, precision: str) -> dict:
    """The ceiling: S6's step alone, on one batch already on the device, eager."""
    from workloads.fer import make_step
    from workloads.models.fer_nets import build_fer_net

    torch.manual_seed(0)
    bf16 = precision == "bf16" and device.type == "cuda"
    model = build_fer_net(arch, 0.25).to(device).train()
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    step_fn = make_step(None, "bf16" if bf16 else "fp32")
    kwargs = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **kwargs)
    x = torch.rand(batch, 1, 48, 48, device=device)
    y = torch.randint(0, 7, (batch,), device=device)
    flags = torch.zeros(batch, dtype=torch.bool, device=device)

    def step():
        loss, _, _ = step_fn(model, (x, y, flags), device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"workload": "fer", "model": f"{arch}, model only", "batch": batch,
            "precision": "bf16+channels_last" if bf16 else "fp32",
            "optimizer": "Adam " + next(iter(kwargs)), "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            **time_steps(step, seconds, device, batch)}


# FER2013's training split by class (angry … neutral); up-sampled to 7 × 7,215 = 50,505 a epoch
FER_TRAIN_COUNTS = (3995, 436, 4097, 7215, 4830, 3171, 4965)


def bench_fer_epoch(arch: str, batch: int, seconds: float, device: torch.device, precision: str,
                    graphs: bool) -> dict:
    """A whole S6 training epoch as fer.train runs it (fer.build_setup): FER2013-sized
    training split up-sampled (brightness jitter on the copies), batches cut on the device,
    the step and the optimizer through the shared loop; eager or as CUDA graphs. precision
    "auto" lets fer.choose_precision pick, as a trial does by default."""
    import numpy as np

    from workloads import fer

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    scale = 1 if device.type == "cuda" else 0.05  # a twentieth of it on the CPU
    labels = np.repeat(np.arange(7), [max(1, int(c * scale)) for c in FER_TRAIN_COUNTS])
    images = rng.integers(0, 256, size=(len(labels), 48, 48), dtype=np.uint8)
    config = {"architecture": arch, "dropout": 0.25, "imbalance": "upsample", "batch_size": batch, "seed": 0,
              "lr": 1e-3, "epochs": 1, "arm": arch, "dataset_fingerprint": "random", "precision": precision,
              "cuda_graphs": graphs}
    setup = fer.build_setup(config, {s: (images, labels) for s in ("train", "val", "test")}, device)
    chosen = setup.info["precision"]
    label = f"{arch}, epoch" + (", graphs" if setup.train_step else "") + (" (auto)" if precision == "auto" else "")
    return {"workload": "fer", "model": label, "batch": batch,
            "precision": "bf16+channels_last" if chosen == "bf16" else "fp32",
            "optimizer": "Adam " + ("fused" if device.type == "cuda" else "foreach"),
            "params_m": sum(p.numel() for p in setup.model.parameters()) / 1e6,
            **time_epochs(setup, setup.loaders["train"], device, seconds, batch)}


def s1_setup(fusion: str, batch: int, device: torch.device, precision: str = "fp32", graphs: bool = False,
             dropout: float | None = None, n_batches: int = 24):
    """S1's trial on generated cached prefix states, as meld_fusion builds it: the top layer of
    a MiniLM-shaped text encoder (384-d, MELD-like transcripts of 8-40 tokens) and of
    whisper-base's encoder (512-d, a 5-s window: 250 frames, 50-250 real), then the fusion
    head; meld_fusion's collate (padded for graphs on a GPU), step and optimizer. Returns the
    TrainSetup and the batches."""
    from transformers import BertConfig, BertModel, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from workloads import meld_fusion
    from workloads.core.graphs import GraphedTrainStep
    from workloads.core.loop import TrainSetup
    from workloads.models.fusion import FusionHead, FusionModel, uses

    torch.manual_seed(0)
    drop = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    text_model = BertModel(BertConfig(hidden_size=384, num_hidden_layers=1, num_attention_heads=12,
                                      intermediate_size=1536, **drop))
    audio_model = WhisperEncoder(WhisperConfig(
        d_model=512, encoder_layers=1, encoder_attention_heads=8, encoder_ffn_dim=2048, max_source_positions=250,
        **({} if dropout is None else {"dropout": dropout, "attention_dropout": dropout, "activation_dropout": dropout})))
    text, audio = uses(fusion)
    head = FusionHead(fusion, 384, 512, 7, **({} if dropout is None else {"dropout": dropout}))
    model = FusionModel(head, text_model.encoder.layer if text else None, audio_model.layers if audio else None,
                        audio_model.layer_norm).to(device).train()
    graphs = graphs and device.type == "cuda"
    opt = meld_fusion.make_optimizer(model, 2e-5, 1e-3, 0.01, device)
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(batch * n_batches):
        frames = torch.randn(int(torch.randint(50, 251, (), generator=g)), 512, generator=g)
        items.append((torch.randn(int(torch.randint(8, 41, (), generator=g)), 384, generator=g) if text else None,
                      frames if audio else None, frames.shape[0] if audio else 0,
                      int(torch.randint(0, 7, (), generator=g))))
    pad = meld_fusion.GRAPH_PAD if graphs else (1, 1)
    loader = [meld_fusion.collate(items[i:i + batch], pad) for i in range(0, len(items), batch)]
    base = meld_fusion.make_step(None)
    use_bf16 = precision == "bf16" and device.type == "cuda"

    def step(m, b, d):
        with torch.autocast(d.type, dtype=torch.bfloat16, enabled=use_bf16):
            return base(m, b, d)

    setup = TrainSetup(model=model, optimizer=opt, loaders={"train": loader}, step=step, class_names=list(range(7)),
                       epochs=1, grad_clip=1.0,
                       train_step=GraphedTrainStep(model, opt, step, device, 1.0) if graphs else None)
    return setup, loader


def bench_s1(fusion: str, batch: int, seconds: float, device: torch.device, precision: str,
             graphs: bool = False) -> dict:
    """S1's training epoch (s1_setup) through the shared loop, eager or graphed. `epoch_s_meld`
    is one epoch of MELD's 9,989 training utterances at that speed."""
    setup, loader = s1_setup(fusion, batch, device, precision, graphs, n_batches=24 if device.type == "cuda" else 2)
    row = {"workload": "s1", "model": f"{fusion}: MiniLM + whisper-base tops" + (", graphs" if setup.train_step else ""),
           "batch": batch, "precision": "bf16" if precision == "bf16" and device.type == "cuda" else "fp32",
           "optimizer": "AdamW " + ("fused" if device.type == "cuda" else "default"),
           "params_m": sum(p.numel() for p in setup.model.parameters()) / 1e6,
           **time_epochs(setup, loader, device, seconds, batch)}
    row["epoch_s_meld"] = 9989 / row["items_per_s"]
    return row


def bench_small(name: str, batch: int, seconds: float, device: torch.device) -> dict:
    """S4's and S5's trial step (the shared classification step, Adam) on random inputs of the
    studies' shapes."""
    from workloads.core.loop import classification_step
    from workloads.models.blstm import AttentionBLSTM
    from workloads.models.classic import MLP, GenreCNN

    torch.manual_seed(0)
    model, shape, workload = {
        "blstm": (lambda: AttentionBLSTM(46, 8), (157, 46), "s4"),
        "mlp_h1": (lambda: MLP(3636, 10, "h1", "relu"), (3636,), "s5"),
        "gtzan_cnn": (lambda: GenreCNN(10), (1, 128, 128), "s5"),
    }[name]
    model = model().to(device).train()
    kwargs = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **kwargs)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 8 if name == "blstm" else 10, (batch,), device=device)
    step_fn = classification_step()

    def step():
        loss, _, _ = step_fn(model, (x, y), device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"workload": workload, "model": name, "batch": batch, "precision": "fp32",
            "optimizer": "Adam " + next(iter(kwargs)), "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            **time_steps(step, seconds, device, batch)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="s3,fer,s1,s4,s5", help="comma-separated: s3, fer, s1, s4, s5")
    p.add_argument("--s1-batch", default="4,64", help="S1 batch sizes (the report's is 4)")
    p.add_argument("--s1-fusions", default="concat,cross_attention")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per configuration")
    p.add_argument("--batch", default=None, help="S3 batch sizes (default 16,32 on a GPU, 16 on the CPU)")
    p.add_argument("--fer-batch", type=int, default=256)
    p.add_argument("--fer-archs", default="basic_cnn,enhanced,advanced_resnet,emotion_se")
    p.add_argument("--precision", default="both", choices=["fp32", "bf16", "both", "auto"],
                   help="auto: only FER's default trial rows (precision by a timed trial, CUDA graphs)")
    p.add_argument("--model", help="S3: a model folder to time instead of e5-small's shape")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the rows to this file too")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    precisions = {"both": ["fp32", "bf16"], "auto": []}.get(args.precision, [args.precision])
    if not on_gpu:
        precisions = precisions[:1] if args.precision == "both" else precisions
    batches = [int(b) for b in (args.batch or ("16,32" if on_gpu else "16")).split(",")]
    where = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; {args.seconds:g} s per row", flush=True)
    rows = []
    wanted = set(args.workloads.split(","))
    modes = (False, True) if on_gpu else (False,)  # eager, CUDA graphs

    def emit(row):
        rows.append(row)
        _print(row)

    for precision in precisions:
        if "s3" in wanted:
            for b in batches:
                for graphs in modes:
                    emit(bench_s3(b, args.seconds, device, args.model, precision, graphs))
        if "fer" in wanted:
            for arch in args.fer_archs.split(","):
                emit(bench_fer(arch, args.fer_batch, args.seconds, device, precision))
                for graphs in modes:
                    emit(bench_fer_epoch(arch, args.fer_batch, args.seconds, device, precision, graphs))
        if "s1" in wanted:
            for fusion in args.s1_fusions.split(","):
                for b in (int(x) for x in args.s1_batch.split(",")):
                    for graphs in modes:
                        emit(bench_s1(fusion, b, args.seconds, device, precision, graphs))
    if "fer" in wanted and on_gpu:  # what fer.train does by default: precision by a timed trial, graphs
        for arch in args.fer_archs.split(","):
            emit(bench_fer_epoch(arch, args.fer_batch, args.seconds, device, "auto", True))
    for name, workload, batch in (("blstm", "s4", 32), ("mlp_h1", "s5", 64), ("gtzan_cnn", "s5", 32)):
        if workload in wanted:
            emit(bench_small(name, batch, args.seconds, device))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "rows": rows}, f, indent=2)
    return rows


def _print(r: dict) -> None:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
    mem = f"{r['peak_mem_mb']:.0f} MB" if r["peak_mem_mb"] is not None else "n/a"
    epoch = f"  MELD epoch {r['epoch_s_meld']:.0f} s" if "epoch_s_meld" in r else ""
    print(f"{r['workload']:4} {r['model'][:44]:44} batch {r['batch']:4} {r['precision']:18} "
          f"{r['items_per_s']:10.1f} items/s  {r['tflops']:8.3f} TFLOP/s  MFU {mfu:>6}  peak {mem}{epoch}", flush=True)


if __name__ == "__main__":
    main()
