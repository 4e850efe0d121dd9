"""S6. Facial expression recognition architectures (FER2013).

Four arms, one per CNN of the report: a basic CNN (3 convs), EnhancedNeuralNet (4 conv
blocks + FC blocks), AdvancedNetwork (residual blocks, the report's choice) and
EmotionRecognitionNet (squeeze-and-excitation). The report's setup is every arm's first
trial: Adam lr 1e-3, batch 256, minority classes up-sampled with brightness jitter,
10 epochs for the basic CNN and 40 for the others. Searched: learning rate, dropout, batch
size, and how to handle the imbalance (up-sample, class-weighted loss, or nothing;
`--set imbalance=none` turns it off for every trial).

    python sweeps/fer_architectures.py                          # generated look-alike, offline
    python sweeps/fer_architectures.py --smoke                  # all four in about a minute
    python sweeps/fer_architectures.py --data-dir ~/data/fer2013.csv   # the real study
"""
from sweeps.runner import Study, main
from sweeps.space import choice, loguniform
from workloads import fer
from workloads.data.fer2013 import LABELS

STUDY = Study(
    name="fer_architectures",
    workload=fer.WORKLOAD,
    description=__doc__,
    trainable=fer.train,
    prepare=fer.prepare,
    describe=fer.describe,
    arms={
        "basic_cnn": {"architecture": "basic_cnn", "model_id": "BasicCNN", "epochs": 10, "dropout": 0.0},
        "enhanced": {"architecture": "enhanced", "model_id": "EnhancedNeuralNet", "epochs": 40},
        "advanced_resnet": {"architecture": "advanced_resnet", "model_id": "AdvancedNetwork", "epochs": 40},
        "emotion_se": {"architecture": "emotion_se", "model_id": "EmotionRecognitionNet", "epochs": 40},
    },
    space={
        "lr": loguniform(1e-4, 3e-3),
        "dropout": choice([0.0, 0.25, 0.4]),
        "batch_size": choice([64, 128, 256]),
        "imbalance": choice(list(fer.IMBALANCE)),
    },
    defaults={
        "data_dir": None,  # None: a generated look-alike of fer2013.csv
        "synth_n": 35887,  # the real file's size when generating
        "lr": 1e-3, "batch_size": 256, "dropout": 0.25, "imbalance": "upsample", "epochs": 40,
        "precision": "auto",  # GPU: fp32 or bf16 + channels-last, whichever a short timed trial finds faster
        "train_size": None, "val_size": None, "test_size": None,  # None: the whole split
    },
    # No GPU: 4,000 generated faces (or a stratified 3200/400/400 of a real file) and 6
    # epochs for every arm, so the four arms end in minutes on a laptop (docs/measurements.md).
    cpu_subset={"synth_n": 4000, "train_size": 3200, "val_size": 400, "test_size": 400, "epochs": 6},
    # small batches so two epochs take enough steps to move (and BatchNorm's running stats)
    smoke={"synth_n": 600, "train_size": 480, "val_size": 60, "test_size": 60, "epochs": 2, "batch_size": 32},
    terminal_columns=["epochs", "lr", "batch_size"],  # the arm"s own knobs beside the metrics, within 120 columns
    knobs={"grad_clip": (None, "clip the gradients' norm to this (None: no clipping)")},
    table_columns=["architecture", "lr", "dropout", "batch_size", "imbalance", "epochs", "train_items_per_s",
                   "test_weighted_f1", *[f"test_f1_{c}" for c in LABELS]],
    official_splits="FER2013's official Training/PublicTest/PrivateTest rows",
)

if __name__ == "__main__":
    main(STUDY)
