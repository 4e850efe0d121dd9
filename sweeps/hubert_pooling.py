"""S2. Pooling a speech encoder's frames for emotion recognition (RAVDESS, ShEMO).

Nine arms, one pooling each, on a frozen encoder whose hidden states are computed once per
corpus and shared by every trial: masked mean, masked max, mean + standard deviation,
learned attention, first frame, the SUPERB learned weighted sum of all layers (then mean),
one hidden layer k mean-pooled (k searched), every layer's mean, and every layer's mean and
standard deviation; and the floor every arm is paired with, a frozen probe (a logistic
regression on every layer's mean). Searched: lr, head width, dropout, weight decay, imbalance
handling. Splits keep every speaker in one split; each speaker's states are standardized by
that speaker's statistics (speaker_norm).

    python sweeps/hubert_pooling.py                                   # RAVDESS look-alike, whisper-base offline
    python sweeps/hubert_pooling.py --data-dir ../shared/data/ravdess # real RAVDESS speech
    python sweeps/hubert_pooling.py --data-dir ../shared/data/ravdess --folds 4   # four speaker folds, mean ± CI
    python sweeps/hubert_pooling.py --smoke                           # tiny random HuBERT, about a minute
    python sweeps/hubert_pooling.py --set encoder_mode=live --set padding=dynamic --arms masked_mean
    python sweeps/hubert_pooling.py --corpus ravdess=DIR --corpus cremad=DIR2   # + train-on-one/test-on-other arms

With two or more corpora (--corpus NAME=PATH, repeated; any layout), the pooling arms run on the
first, and every ordered pair that shares two classes or more gets a cross-corpus arm (A_to_B:
every layer's mean, trained and validated on A, tested on B's test part, on the shared classes)
and its own probe (A_to_B_probe), which it is paired with.
"""
from sweeps.runner import Study, main
from sweeps.space import choice, loguniform, uniform
from workloads import speech_pooling

HEAD_KNOBS = ("lr", "head_width", "dropout", "weight_decay", "imbalance")  # what every learned pooling searches
ARMS = {**{name: {"pooling": name, "searched": HEAD_KNOBS + (("layer_frac",) if name == "layer_mean" else ())}
           for name in ("masked_mean", "masked_max", "mean_std", "attention", "first_frame", "weighted_layers",
                        "layer_mean", "layers_mean", "layers_mean_std")},
        # the floor: a standardized logistic regression on every layer's mean (a frozen probe)
        "probe": {"pooling": "probe", "searched": ()}}
CROSS_POOLING = "layers_mean"  # what a cross-corpus arm pools with: the best arm on real RAVDESS (docs/real-data.md)


def arms_for(opts) -> dict | None:
    """With two or more named corpora: the pooling arms on each, on its own folds (named as
    declared on the first corpus, `ARM_on_CORPUS` on the others: MLflow keys take no `@`), and per ordered pair a
    cross-corpus arm and its probe, each with its class map; else the declared arms. The
    sweep's end ranks the pooling arms across the corpora (compare.py)."""
    from workloads.data.layouts import corpus_classes, cross_pairs, named_corpora

    if not opts.corpus:
        return None
    given = named_corpora(opts.corpus, opts.data_dir)
    if len(given) < 2:
        return None
    classes = {name: corpus_classes(name, path, opts.media_root) for name, path in given.items()}
    first = next(iter(given))
    arms = {}
    for corpus in given:
        for name, arm in ARMS.items():
            arms[name if corpus == first else f"{name}_on_{corpus}"] = {
                **arm, "train_corpus": corpus, "test_corpus": corpus, "arm_classes": ",".join(classes[corpus])}
    for a, b, shared in cross_pairs(classes):
        pair = {"train_corpus": a, "test_corpus": b, "arm_classes": ",".join(shared)}
        arms[f"{a}_to_{b}"] = {"pooling": CROSS_POOLING, "searched": HEAD_KNOBS, **pair}
        arms[f"{a}_to_{b}_probe"] = {"pooling": "probe", "searched": (), **pair}
    return arms


def reference_of(arm: str, arms: dict) -> str | None:
    """What an arm is paired with: the probe on its own data (a cross-corpus arm's own probe)."""
    if arm.endswith("_probe"):
        return None
    config = arms.get(arm, {})
    if config.get("train_corpus") != config.get("test_corpus"):
        return f"{arm}_probe" if f"{arm}_probe" in arms else None
    corpus = config.get("test_corpus")
    if corpus and arm.endswith(f"_on_{corpus}"):  # a pooling arm on another corpus: that corpus's probe
        return f"probe_on_{corpus}" if f"probe_on_{corpus}" in arms else None
    if "probe" in arms:
        return "probe"
    from sweeps.results import default_reference

    return default_reference(arms)

STUDY = Study(
    name="hubert_pooling",
    workload=speech_pooling.WORKLOAD,
    description=__doc__,
    trainable=speech_pooling.train,
    prepare=speech_pooling.prepare,
    describe=speech_pooling.describe,
    arms=ARMS,
    arms_for=arms_for,
    space={
        "lr": loguniform(1e-4, 3e-3),
        "head_width": choice([128, 256, 512]),
        "dropout": uniform(0.0, 0.4),
        "weight_decay": choice([0.0, 0.01, 0.1]),
        "imbalance": choice(["class_weights", "resample", "none"]),
        "layer_frac": uniform(0.0, 1.0),  # read by the layer_mean arm only (the others search HEAD_KNOBS)
    },
    defaults={
        "model": "facebook/hubert-base-ls960",  # offline: the shelf's whisper-base encoder
        "whisper_window": 5.0,  # seconds of Whisper's position table kept; None: its 30-s window
        "corpus": "ravdess", "data_dir": None, "synth_n": 480, "synth_difficulty": 0.5,
        "clip_seconds": 5.0, "pooling": "masked_mean", "layer_frac": 0.5,
        # The head's settings a search found on real RAVDESS (whisper-base, 4 speaker folds,
        # speaker_norm): layers_mean's best mean validation accuracy. docs/real-data.md has the
        # search, its size and what it cost.
        # The report's own were lr 1e-3, width 256, dropout 0.1, class weights.
        "lr": 4e-4, "head_width": 512, "dropout": 0.25, "weight_decay": 0.01, "imbalance": "none",
        "batch_size": 32, "epochs": 20, "grad_clip": 1.0,
        "finetune_top": 0,  # k > 0: fine-tune the top k layers on the cached state entering them
        "encoder_mode": "cached",  # live: run the frozen encoder every batch (the padding study)
        "padding": "fixed",  # live mode: fixed (to clip_seconds) or dynamic (to the batch's longest)
        "cache_dtype": "float16",
        # the frozen encoders' forward: auto (fp16 on a GPU, fp32 on a CPU), fp32, bf16 or fp16 (each
        # its own cache); encode_batch 0: clips per batch sized from the device
        "encode_precision": "auto", "encode_batch": 0,
        # standardize each speaker's states by that speaker's own statistics (all their clips, no
        # labels; a test speaker's unlabeled clips too, as speaker normalization in SER does)
        "speaker_norm": True,
        "floor_c": 1.0,  # the probe's inverse regularization
    },
    smoke={"synth_n": 96, "epochs": 3},
    terminal_columns=["layer_used", "lr"],  # the arm"s own knobs beside the metrics, within 120 columns
    table_columns=["pooling", "layer_used", "hidden_states", "speaker_norm", "imbalance", "lr", "head_width",
                   "dropout", "weight_decay", "finetune_top", "train_corpus", "test_corpus", "arm_classes"],
    metric="best_val_acc",
    reference=reference_of,  # does a learned pooling beat the frozen probe on the same folds (and data)?
)

if __name__ == "__main__":
    main(STUDY)
