"""`emosweep predict FILE --run-id RUN`: the top emotions of one audio file (S4's single-file
prediction), from the model a trial logged to MLflow. Any file FFmpeg reads; a file it cannot
use is a clear error that names it."""
from __future__ import annotations

import os
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="top emotions of an audio file, from a trial's logged model")
    p.add_argument("file", help="any audio (or video) file FFmpeg reads")
    p.add_argument("--run-id", required=True, help="the child run whose model to use")
    p.add_argument("--text", help="the transcript, for a fusion model")
    p.add_argument("--top", type=int, default=2, help="how many emotions to print")
    p.add_argument("--tracking-uri", help="MLflow server (default: $EMOSWEEP_TRACKING_URI, else start one on "
                                          "$EMOSWEEP_HOME/mlflow)")


def predict_file(model, path: str, text: str | None = None):
    """(class, probability) pairs, most likely first. MediaError for a file that is not usable."""
    import pandas as pd

    from .serving import decode_upload

    decode_upload(path)  # checked here, so that an error names the file
    with open(path, "rb") as f:
        frame = {"audio": [f.read()]}
    if "text" in model.inputs:
        if text is None:
            raise ValueError("this run's model reads a transcript too: pass --text")
        frame["text"] = [text]
    probs = model.predict(pd.DataFrame(frame)).iloc[0]
    return sorted(probs.items(), key=lambda kv: -kv[1])


def main(args) -> int:
    from .core.tracking import fail_fast_requests, tracking_server
    from .data.audio import MediaError
    from .demo import DemoError, load
    from .serving import RefusedModel

    if not os.path.isfile(args.file):
        print(f"emosweep predict: {args.file}: no such file", file=sys.stderr)
        return 2
    fail_fast_requests()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the answer is the output
    with tracking_server(args.tracking_uri) as uri:
        try:
            model, run = load(uri, run_id=args.run_id)
            ranked = predict_file(model, args.file, args.text)
        except (DemoError, RefusedModel, MediaError, ValueError) as e:
            print(f"emosweep predict: {e}", file=sys.stderr)
            return 2
    print(f"{args.file} ({run.info.run_name}):")
    for label, p in ranked[:args.top]:
        print(f"  {label:<12} {p:.3f}")
    return 0
