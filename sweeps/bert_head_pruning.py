"""S3, widened: how much of ParsBERT's attention can be pruned at random before NLI suffers?

Arms prune 0%, 25%, 50% and 75% of the heads of every layer (random, seeded, structural),
then fine-tune; the learning rate is searched.

    python sweeps/bert_head_pruning.py --smoke
"""
from sweeps.space import loguniform

from sweeps.bert_freezing import STUDY as FREEZING
from sweeps.runner import Study, main

STUDY = Study(
    name="bert_head_pruning",
    workload=FREEZING.workload,
    description=__doc__,
    trainable=FREEZING.trainable,
    prepare=FREEZING.prepare,
    describe=FREEZING.describe,
    arms={f"prune_{int(f * 100)}": {"strategy": "prune_heads", "prune_fraction": f} for f in (0.0, 0.25, 0.5, 0.75)},
    space={"lr": loguniform(1e-5, 1e-4)},
    defaults=FREEZING.defaults,
    cpu_subset=FREEZING.cpu_subset,
    cpu_note=("No GPU: a stratified CPU subset of FarsTail ({subset}). At this size every arm stays near chance "
              "(accuracy ~0.33): this run checks the pipeline, not what pruning costs. That shows with --full-data "
              "on a GPU (e5-small on an H100: 0.781 unpruned, 0.728 with half the heads pruned)."),
    smoke=FREEZING.smoke,
    terminal_columns=["heads_per_layer_after", "lr"],  # the arm"s own knobs beside the metrics, within 120 columns
    knobs={"dropout": (None, "the encoder's hidden and attention dropout (None: the model's own)"),
           "trim_vocab": (True, "a shelf model keeps only the vocabulary pieces FarsTail uses (same outputs)")},
    table_columns=["prune_fraction", "heads_per_layer_before", "heads_per_layer_after", "lr", "batch_size", "epochs"],
    official_splits="FarsTail's official train/val/test files",
)

if __name__ == "__main__":
    main(STUDY)
