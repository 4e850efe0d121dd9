"""S5. Speaker identification: logistic regression by SGD or by the sag solver, on spectral
statistics or on 13 mean MFCCs, as scikit-learn estimators run as Tune trials.

Arms: `sgd_spectral`, `sag_spectral` (mean spectral centroid, zero-crossing rate and RMS; the
report: 66.5% / 71.6%), `sgd_mfcc`, `sag_mfcc` (13 mean MFCCs; the report: 96.5% / 97.7%), each
standardized, and `floor`, a standardized logistic regression on the clip's mean and standard
deviation of the 13 MFCC frames. Searched: the SGD's regularization `alpha`, the sag solver's `C`.
Random split per speaker from the seed: 20% test (the report: 6000/1501), a tenth of the whole
for validation. The corpus is one folder per speaker.

    python sweeps/speaker_id.py                              # generated look-alike (5 speakers, 600 clips)
    python sweeps/speaker_id.py --data-dir SPEAKERS          # one folder per speaker
    python sweeps/speaker_id.py --data-dir ../shared/data/ravdess   # RAVDESS's 24 actors as the speakers
    python sweeps/speaker_id.py --smoke --num-samples 4      # four trials per arm, about a minute
"""
from sweeps.runner import Study, main
from sweeps.space import loguniform
from workloads import speaker_id

REPORTED = {("sgd", "spectral"): "0.665", ("sag", "spectral"): "0.716", ("sgd", "mfcc"): "0.965",
            ("sag", "mfcc"): "0.977"}
SOLVERS = {"sgd": "SGD, log loss, constant lr 0.01", "sag": "logistic regression, sag solver"}
ARMS = {
    **{f"{solver}_{features}": {"method": solver, "features": features, "standardize": True,
                                "model_id": SOLVERS[solver], "report_test_acc": reported,
                                "searched": ("alpha",) if solver == "sgd" else ("C",)}
       for (solver, features), reported in REPORTED.items()},
    "floor": {"method": "floor", "features": "mfcc mean+std", "standardize": True,
              "model_id": "logistic regression on clip mean + std", "report_test_acc": "", "searched": ()},
}


STUDY = Study(
    name="speaker_id",
    workload=speaker_id.WORKLOAD,
    description=__doc__,
    trainable=speaker_id.train,
    prepare=speaker_id.prepare,
    describe=speaker_id.describe,
    arms=ARMS,
    space={
        "alpha": loguniform(1e-6, 1e-2),
        "C": loguniform(1e-2, 1e2),
    },
    defaults={"alpha": 1e-4, "C": 1.0, "max_iter": 1000, "floor_c": 1.0, "synth_n": 600},
    smoke={"synth_n": 100},
    terminal_columns=["report_test_acc", "alpha", "C"],  # the arm"s own knobs beside the metrics, within 120 columns
    table_columns=["report_test_acc", "features", "standardize", "alpha", "C"],
    metric="best_val_acc",
    split_by="item", speaker_folds=False,  # the labels are the speakers
)

if __name__ == "__main__":
    main(STUDY)
