"""S5. GTZAN music genres: the report's small CNN on 128×128 log-mel images.

Arms: `cnn`, Conv2D(32, 3×3, ReLU) → MaxPool(3×3, stride 2) → BatchNorm → Flatten → Dense(10),
1,230,538 parameters as Keras counts them, Adam lr 1e-4, batch 32, 30 epochs (the report: 68%
test accuracy); `floor`, a logistic regression on each clip's mean and standard deviation of
the 128 mel bands. Random 80/20 split per genre from the seed, a tenth of the whole held out of
training for validation. The real archive's corrupt jazz.00054.wav is reported and left out.

    python sweeps/gtzan_cnn.py                               # generated look-alike (200 clips of 3 s)
    python sweeps/gtzan_cnn.py --data-dir GTZAN --full-data  # genres_original/<genre>/*.wav
    python sweeps/gtzan_cnn.py --smoke                       # about a minute
"""
from sweeps.runner import Study, main
from sweeps.space import choice, loguniform
from workloads import gtzan_cnn

ARMS = {
    "cnn": {"method": "cnn", "model_id": "GTZAN CNN (from scratch)", "report_test_acc": "0.68"},
    "floor": {"method": "floor", "model_id": "logistic regression on clip mean + std", "report_test_acc": "",
              "searched": ()},  # the network's knobs are not the floor's
}

STUDY = Study(
    name="gtzan_cnn",
    workload=gtzan_cnn.WORKLOAD,
    description=__doc__,
    trainable=gtzan_cnn.train,
    prepare=gtzan_cnn.prepare,
    describe=gtzan_cnn.describe,
    arms=ARMS,
    space={
        "lr": loguniform(3e-5, 1e-3),
        "batch_size": choice([16, 32, 64]),
    },
    defaults={"lr": 1e-4, "batch_size": 32, "epochs": 30, "patience": None, "grad_clip": None, "floor_c": 1.0,
              "synth_n": 200},
    smoke={"synth_n": 60, "epochs": 2},
    terminal_columns=["report_test_acc"],  # the arm"s own knobs beside the metrics, within 120 columns
    table_columns=["report_test_acc", "keras_params"],
    metric="best_val_acc",
    split_by="item",  # the report's random 80/20 (GTZAN names no speakers)
)

if __name__ == "__main__":
    main(STUDY)
