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
"""
from sweeps.runner import Study, main
from sweeps.space import choice, loguniform, uniform
from workloads import speech_pooling

STUDY = Study(
    name="hubert_pooling",
    workload=speech_pooling.WORKLOAD,
    description=__doc__,
    trainable=speech_pooling.train,
    prepare=speech_pooling.prepare,
    describe=speech_pooling.describe,
    arms={**{name: {"pooling": name} for name in
             ("masked_mean", "masked_max", "mean_std", "attention", "first_frame", "weighted_layers", "layer_mean",
              "layers_mean", "layers_mean_std")},
          # the floor: a standardized logistic regression on every layer's mean (a frozen probe)
          "probe": {"pooling": "probe", "searched": ()}},
    space={
        "lr": loguniform(1e-4, 3e-3),
        "head_width": choice([128, 256, 512]),
        "dropout": uniform(0.0, 0.4),
        "weight_decay": choice([0.0, 0.01, 0.1]),
        "imbalance": choice(["class_weights", "resample", "none"]),
        "layer_frac": uniform(0.0, 1.0),  # read by the layer_mean arm only
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
        # standardize each speaker's states by that speaker's own statistics (all their clips, no
        # labels; a test speaker's unlabeled clips too, as speaker normalization in SER does)
        "speaker_norm": True,
        "floor_c": 1.0,  # the probe's inverse regularization
    },
    smoke={"synth_n": 96, "epochs": 3},
    terminal_columns=["layer_used", "lr"],  # the arm"s own knobs beside the metrics, within 120 columns
    table_columns=["pooling", "layer_used", "hidden_states", "speaker_norm", "imbalance", "lr", "head_width",
                   "dropout", "weight_decay", "finetune_top"],
    metric="best_val_acc",
    reference="probe",  # does a learned pooling beat the frozen probe on the same folds?
)

if __name__ == "__main__":
    main(STUDY)
