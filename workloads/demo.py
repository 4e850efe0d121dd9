"""`emosweep demo`: the fusion study's best model in a web page (Gradio), as the report had.

A person types a transcript and uploads or records audio; the page shows the seven class
probabilities as a bar chart and as numbers. The model is the one a fusion trial logged,
rebuilt from its spec and safetensors weights after checking them against the run's hashes
(workloads/serving.py; nothing from the store is executed): the best child run of the latest fusion sweep by the sweep's
own metric (dev accuracy), or `--run-id`. The page binds to 127.0.0.1 unless told otherwise.
A file that cannot be decoded gets a message on the page that names the problem.
"""
from __future__ import annotations

import os
import sys

from .core.paths import mask_uri

DEFAULT_EXPERIMENT = "meld_fusion"
MAX_UPLOAD_MB = 25.0  # minutes of compressed audio; the model reads seconds


class DemoError(RuntimeError):
    pass


def find_run(client, experiment: str, run_id: str | None = None):
    """The run whose model to serve: `run_id`, else the child run with the best dev accuracy
    among those of the latest sweep (parent run) of `experiment` that logged a model."""
    from .core.tracking import TAG_MODEL, TAG_PARENT

    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception as e:
            raise DemoError(f"no run {run_id} at {mask_uri(client.tracking_uri)} ({type(e).__name__})") from None
        if not run.data.tags.get(TAG_MODEL):
            raise DemoError(f"run {run_id} ({run.info.run_name}) logged no model (tag {TAG_MODEL}); floors and "
                            f"unfinished trials have none")
        return run
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise DemoError(f"no MLflow experiment {experiment!r}: run `python sweeps/meld_fusion.py` first "
                        f"(--smoke takes about a minute)")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.{TAG_MODEL} != ''",
                                  order_by=["attributes.start_time DESC"], max_results=500)
    if not children:
        raise DemoError(f"no run of experiment {experiment!r} logged a model yet")
    latest_parent = children[0].data.tags.get(TAG_PARENT)
    sweep = [r for r in children if r.data.tags.get(TAG_PARENT) == latest_parent]
    return max(sweep, key=lambda r: r.data.metrics.get("best_val_acc", float("-inf")))


def probabilities_table(classes, probs):
    import pandas as pd

    return pd.DataFrame({"class": list(classes), "probability": [float(p) for p in probs]})


def build_app(model, run, title: str | None = None):
    """The Gradio page for a loaded ServedModel `model` (from `run`)."""
    import gradio as gr
    import pandas as pd

    from .data.audio import MediaError

    inputs, classes = set(model.inputs), list(model.classes)
    arm = run.data.tags.get("arm", "?")
    empty = probabilities_table(classes, [0.0] * len(classes))

    def predict(text, audio_path):
        if "audio" in inputs and not audio_path:
            return empty, "", "Upload or record audio first."
        if "text" in inputs and not (text or "").strip():
            return empty, "", "Type the transcript first."
        frame = {}
        if "text" in inputs:
            frame["text"] = [text]
        if "audio" in inputs:
            with open(audio_path, "rb") as f:
                frame["audio"] = [f.read()]
        try:
            out = model.predict(pd.DataFrame(frame))
        except MediaError as e:
            return empty, "", f"Cannot use {os.path.basename(audio_path)}: {e.reason}. {e.detail}".strip()
        probs = out.iloc[0].to_numpy()
        lines = "\n".join(f"{c}: {p:.4f}" for c, p in zip(classes, probs))
        return probabilities_table(classes, probs), lines, f"Most likely: {classes[int(probs.argmax())]}"

    metric = run.data.metrics.get("best_val_acc")
    heading = title or "Emotion from a transcript and its audio"
    about = (f"Model: child run `{run.info.run_id}` ({run.info.run_name}), arm **{arm}**"
             + (f", dev accuracy {metric:.3f}" if metric is not None else "")
             + f". Text encoder: {run.data.tags.get('text_model_id') or '-'}; audio encoder: "
             + f"{run.data.tags.get('audio_model_id') or '-'}.")
    with gr.Blocks(title=heading, analytics_enabled=False) as app:
        gr.Markdown(f"# {heading}\n{about}")
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label="Transcript", lines=2, elem_id="transcript",
                                  visible="text" in inputs, placeholder="What was said")
                audio = gr.Audio(label="Audio", sources=["upload", "microphone"], type="filepath",
                                 elem_id="audio", visible="audio" in inputs)
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column():
                chart = gr.BarPlot(empty, x="class", y="probability", y_lim=[0, 1], sort=classes,
                                   label="Class probabilities", elem_id="chart")
                numbers = gr.Textbox(label="Probabilities", lines=len(classes), elem_id="probabilities",
                                     interactive=False)
                status = gr.Markdown(elem_id="status")
        button.click(predict, [text, audio], [chart, numbers, status])
    return app


def load(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT, run_id: str | None = None):
    """(ServedModel, run) from the tracking server: `run_id`'s model, else the best of the
    latest sweep of `experiment`, checked against its run's hashes and rebuilt from its spec
    and safetensors weights; nothing from the store is executed. DemoError says what is
    missing, RefusedModel what is wrong (`emosweep predict` too)."""
    import tempfile

    from mlflow.tracking import MlflowClient

    from .core.tracking import TAG_MODEL
    from .serving import load_logged_model

    run = find_run(MlflowClient(tracking_uri), experiment, run_id)
    with tempfile.TemporaryDirectory(prefix="emosweep-served-") as tmp:
        return load_logged_model(run.data.tags[TAG_MODEL], run, tracking_uri, tmp), run


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="serve the fusion study's best model in a web page")
    p.add_argument("--run-id", help="the child run whose model to serve (default: the best of the latest sweep)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    p.add_argument("--tracking-uri", help="MLflow server (default: $EMOSWEEP_TRACKING_URI, else start one on "
                                          "$EMOSWEEP_HOME/mlflow)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-file-mb", type=float, default=MAX_UPLOAD_MB,
                   help=f"the largest upload the page accepts (default {MAX_UPLOAD_MB:g} MB)")


def launch(app, host: str, port: int, max_file_mb: float, **kwargs):
    """Serve the page: never shared through Gradio's tunnel, no browser opened, and an upload
    over `max_file_mb` refused by the server before it is stored (the page says why)."""
    return app.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                      max_file_size=f"{max_file_mb:g}mb", **kwargs)


def main(args) -> int:
    from .core.tracking import fail_fast_requests, tracking_server
    from .serving import RefusedModel

    fail_fast_requests()
    try:
        with tracking_server(args.tracking_uri) as uri:
            model, run = load(uri, args.experiment, args.run_id)
            print(f"[emosweep] serving run {run.info.run_id} ({run.info.run_name}) on http://{args.host}:{args.port}",
                  flush=True)
            launch(build_app(model, run), args.host, args.port, args.max_file_mb)
    except (DemoError, RefusedModel) as e:
        print(f"emosweep demo: {e}", file=sys.stderr)
        return 2
    return 0
