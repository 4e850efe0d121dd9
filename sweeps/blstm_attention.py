"""S4. Attention_BLSTM on 46 hand-made frame features, within and across corpora.

The report's network (157 frames × 46 librosa features per 5-s clip → BLSTM 256 each way with
local attention → softmax; 758,022 Keras parameters for six classes), trained with Adam and
early stopping on validation loss, up to 30 epochs. Arms: each of RAVDESS, ShEMO and EmoDB on
its own; the cross-corpus question (train on one corpus, test on another's test split, on the
classes the two share); and a floor per corpus, a standardized logistic regression on each
clip's mean and standard deviation of the same features. Searched: lr, hidden size, dropout,
patience. Splits keep every speaker in one split.

    python sweeps/blstm_attention.py                                  # generated look-alikes of all three
    python sweeps/blstm_attention.py --ravdess ../shared/data/ravdess --arms ravdess,ravdess_floor
    python sweeps/blstm_attention.py --ravdess DIR --emodb DIR --arms emodb_to_ravdess
    python sweeps/blstm_attention.py --smoke                          # about a minute
    python sweeps/blstm_attention.py --corpus ravdess=DIR --corpus mine=my_clips.csv   # any corpora, any layout:
                                            # arms ravdess, mine, their floors, ravdess_to_mine and mine_to_ravdess
    emosweep predict clip.wav --run-id RUN                            # top-2 emotions of any audio file
"""
from sweeps.runner import Study, main
from sweeps.space import choice, loguniform, uniform
from workloads import blstm_attention

def _arms() -> dict:
    blstm = {"method": "blstm", "model_id": "Attention_BLSTM (from scratch)"}
    floor = {"method": "floor", "model_id": "logistic regression on clip mean + std", "searched": ()}
    within = {c: {"train_corpus": c, "test_corpus": c, **blstm} for c in blstm_attention.CORPORA}
    cross = {f"{a}_to_{b}": {"train_corpus": a, "test_corpus": b, **blstm}
             for a, b in (("emodb", "ravdess"), ("ravdess", "emodb"), ("shemo", "ravdess"), ("ravdess", "shemo"))}
    floors = {f"{c}_floor": {"train_corpus": c, "test_corpus": c, **floor} for c in blstm_attention.CORPORA}
    arms = {**within, **cross, **floors}
    for arm in arms.values():  # the class map, in the table: what each arm trains and is tested on
        arm["classes"] = ",".join(blstm_attention.arm_classes(arm))
    return arms


ARMS = _arms()  # within each corpus, across corpora, and the floor of each corpus


def arms_for(opts) -> dict | None:
    """The arms of the corpora the command line names (--corpus NAME=PATH, --data-dir, and
    --ravdess/--shemo/--emodb beside them), or None (no --corpus or --data-dir: the declared
    arms over the three corpora, look-alikes where no folder is given)."""
    if not (opts.corpus or opts.data_dir):
        return None
    given = blstm_attention.given_corpora({"data_dir": opts.data_dir}, opts.ravdess, opts.shemo, opts.emodb,
                                          opts.corpus)
    from workloads.data.layouts import corpus_classes

    return blstm_attention.corpus_arms({name: corpus_classes(name, path, opts.media_root)
                                        for name, path in given.items()})


STUDY = Study(
    name="blstm_attention",
    workload=blstm_attention.WORKLOAD,
    description=__doc__,
    trainable=blstm_attention.train,
    prepare=blstm_attention.prepare,
    describe=blstm_attention.describe,
    path_flags=("ravdess", "shemo", "emodb"),
    arms_for=arms_for,
    extra_flags={c: f"{c} corpus folder (default: a generated look-alike)" for c in blstm_attention.CORPORA},
    arms=ARMS,
    space={
        "lr": loguniform(1e-4, 3e-3),
        "hidden": choice([64, 128, 256]),
        "dropout": uniform(0.0, 0.5),
        "patience": choice([3, 5, 8]),
    },
    defaults={
        "lr": 1e-3, "hidden": 256, "dropout": 0.0, "patience": 5, "epochs": 30, "batch_size": 32,
        "class_weights": False, "grad_clip": None, "floor_c": 1.0, "synth_n": 480, "log_model": True,
        # each speaker's features standardized by that speaker's own statistics (no labels), floor too
        "speaker_norm": False,
    },
    smoke={"synth_n": 96, "epochs": 3, "hidden": 64},
    terminal_columns=["n_classes", "chance"],  # the arm"s own knobs beside the metrics, within 120 columns
    table_columns=["train_corpus", "test_corpus", "method", "n_classes", "chance", "classes", "speaker_norm", "lr",
                   "hidden", "dropout", "patience"],
    metric="best_val_acc",
    reference=blstm_attention.floor_of,  # each corpus's BLSTM against that corpus's floor
)

if __name__ == "__main__":
    main(STUDY)
