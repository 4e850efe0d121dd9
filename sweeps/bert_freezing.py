"""S3. BERT fine-tuning strategies on Persian NLI (FarsTail).

Five arms, each a way to fine-tune ParsBERT (offline: the shelf's multilingual-e5-small, also
12 layers × 12 heads, its vocabulary trimmed to FarsTail's pieces): full fine-tuning; freeze the first 9 layers
(Lee et al. 2019); freeze all but the last layer and the embeddings; keep only the first 9
layers; prune 50% of the heads of every layer at random (Michel et al. 2019). Layer counts
scale with the model's depth. Searched: learning rate, batch size, epochs, warmup, weight decay.

    python sweeps/bert_freezing.py            # offline default: embedded FarsTail, CPU subset, e5-small
    python sweeps/bert_freezing.py --smoke    # tiny random BERT, about a minute
"""
from sweeps.runner import Study, main
from sweeps.space import choice, loguniform, uniform
from workloads import bert_nli

STUDY = Study(
    name="bert_freezing",
    workload=bert_nli.WORKLOAD,
    description=__doc__,
    trainable=bert_nli.train,
    prepare=bert_nli.prepare,
    describe=bert_nli.describe,
    arms={
        "full": {"strategy": "full"},
        "freeze_first_9": {"strategy": "freeze_first", "layers": 9},
        "freeze_all_but_last": {"strategy": "freeze_all_but_last"},
        "keep_first_9": {"strategy": "keep_first", "layers": 9},
        "prune_heads_50": {"strategy": "prune_heads", "prune_fraction": 0.5},
    },
    space={
        "lr": loguniform(1e-5, 1e-4),
        "batch_size": choice([16, 32]),
        "epochs": choice([2, 3, 4]),
        "warmup_ratio": uniform(0.0, 0.2),
        "weight_decay": choice([0.0, 0.01, 0.1]),
    },
    defaults={
        "model": "HooshvareLab/bert-base-parsbert-uncased",
        "data_dir": None,  # None: the FarsTail copy embedded in the package
        "lr": 3e-5, "batch_size": 16, "epochs": 3, "warmup_ratio": 0.1, "weight_decay": 0.01,
        "max_length": 128, "grad_clip": 1.0,
        "length_buckets": False,  # True: batches of similar length (less padding; a GPU speed-up)
        "train_size": None, "val_size": None, "test_size": None,  # None: the whole split
    },
    # No GPU: a stratified subset sized so the five-arm default run on the trimmed e5-small ends
    # in minutes on a laptop (docs/measurements.md: the measured time). --full-data lifts it.
    cpu_subset={"train_size": 240, "val_size": 96, "test_size": 240, "epochs": 2},
    cpu_note=("No GPU: a stratified CPU subset of FarsTail ({subset}) so the five arms finish in under 10 "
              "minutes. At this size every strategy stays near chance (accuracy ~0.33): this run checks the "
              "pipeline, not the strategies. Their differences (0.39 to 0.78 test accuracy for e5-small on an "
              "H100) show with --full-data on a GPU."),
    # A random tiny BERT learns nothing at a fine-tuning rate; smoke checks the machinery.
    smoke={"train_size": 96, "val_size": 48, "test_size": 48, "epochs": 2, "max_length": 64, "lr": 1e-4},
    terminal_columns=["layers_frozen", "lr"],  # the arm"s own knobs beside the metrics, within 120 columns
    knobs={"dropout": (None, "the encoder's hidden and attention dropout (None: the model's own)"),
           "trim_vocab": (True, "a shelf model keeps only the vocabulary pieces FarsTail uses (same outputs)")},
    table_columns=["strategy", "layers_frozen", "layers_kept", "heads_per_layer_after", "lr", "batch_size",
                   "epochs", "warmup_ratio", "weight_decay"],
    official_splits="FarsTail's official train/val/test files",
)

if __name__ == "__main__":
    main(STUDY)
