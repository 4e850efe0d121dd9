"""S1. MELD text + audio late fusion, with the inference-time ablation.

The report's model (its first trial): the text encoder's first-token vector and the audio
encoder's masked-mean vector, each → Linear → LayerNorm (256) → concatenated → MLP → 7
classes; only the last transformer layer of each encoder and the head train; class-weighted
cross-entropy, gradient clipping 1.0, seed 42, 6 epochs, batch 4, best epoch by dev accuracy.
Arms: that late concatenation, text only, audio only (each trained on its own), and two
fusion operators the report did not try: a learned gate, and cross-attention from text
tokens to audio frames. Every fusion trial also scores its best epoch with the audio, then
the text, zeroed. Searched: encoder-layer lr, head lr, head width, dropout.

The frozen encoder bottoms run once per corpus (prefix cache); trials train only the top.

    python sweeps/meld_fusion.py                                # MELD look-alike, MiniLM + whisper-base offline
    python sweeps/meld_fusion.py --data-dir MELD.Raw            # the real archive (CSV + mp4)
    python sweeps/meld_fusion.py --data-dir ../shared/data/meld-text   # transcripts only: the text arm
    python sweeps/meld_fusion.py --smoke                        # tiny random encoders, about a minute
    emosweep demo                                               # the best trial's model in a web page
"""
from sweeps.runner import Study, main
from sweeps.space import choice, loguniform, uniform
from workloads import meld_fusion

STUDY = Study(
    name="meld_fusion",
    workload=meld_fusion.WORKLOAD,
    description=__doc__,
    trainable=meld_fusion.train,
    prepare=meld_fusion.prepare,
    describe=meld_fusion.describe,
    unavailable=meld_fusion.unavailable,
    extra_flags={"text-model": "text encoder: hub id, folder, shelf name or 'offline' (default roberta-base; "
                               "offline: the shelf's MiniLM)",
                 "audio-model": "audio encoder: hub id, folder, shelf name or 'offline' (default "
                                "facebook/wav2vec2-base-960h; offline: the shelf's whisper-base, 5-s window)"},
    arms={
        "late_concat": {"fusion": "concat"},  # the report's
        "text_only": {"fusion": "text"},
        "audio_only": {"fusion": "audio"},
        "gated": {"fusion": "gated"},
        "cross_attention": {"fusion": "cross_attention"},
    },
    space={
        "lr": loguniform(1e-5, 1e-4),  # the encoders' top layers
        "head_lr": loguniform(1e-4, 3e-3),
        "fusion_width": choice([128, 256]),
        "dropout": uniform(0.0, 0.3),
    },
    defaults={
        "text_model": "roberta-base", "audio_model": "facebook/wav2vec2-base-960h",
        "whisper_window": 5.0,  # the offline Whisper stand-in's window, cut to the clip (5 s)
        "data_dir": None, "synth_n": 600, "synth_difficulty": 0.5,
        "fusion": "concat", "max_length": 128, "clip_seconds": 5.0, "finetune_top": 1,
        "fusion_width": 256, "head_hidden": 256, "dropout": 0.1,
        "lr": 2e-5, "head_lr": 1e-3, "weight_decay": 0.01, "batch_size": 4, "epochs": 6, "grad_clip": 1.0,
        "max_items": None,  # the CPU subset: at most this many utterances over the three splits
        "cache_dtype": "float16", "log_model": True,
        # the frozen encoders' forward: auto (fp16 on a GPU, fp32 on a CPU), fp32, bf16 or fp16 (each
        # its own cache); encode_batch 0: clips per batch sized from the device
        "encode_precision": "auto", "encode_batch": 0,
    },
    smoke={"synth_n": 64, "epochs": 2, "batch_size": 8},
    cpu_subset={"max_items": 1500},
    cpu_note=("CPU run: at most 1,500 utterances of a real MELD archive ({subset}), the look-alike whole; "
              "--full-data on a GPU for the report's setting"),
    terminal_columns=["test_weighted_f1", "test_acc_no_audio", "test_acc_no_text"],  # the arm"s own knobs beside the metrics, within 120 columns
    knobs={"log_model": (None, "true (every trial logs its model), false, or a list of the arms that do")},
    table_columns=["fusion", "test_weighted_f1", "test_acc_no_audio", "test_acc_no_text", "lr", "head_lr",
                   "fusion_width", "dropout"],
    metric="best_val_acc",
    official_splits="MELD's official train/dev/test sets",
)

if __name__ == "__main__":
    main(STUDY)
