"""What does running a job as a sweep trial cost?

The same small training job (the packaged MiniLM, full fine-tuning on a FarsTail subset) runs
twice, side by side in one invocation, each as a fresh process timed end to end:
  (a) a plain PyTorch loop: data, model, epochs, evaluation; nothing else;
  (b) a one-trial sweep through the runner: Ray, Tune, Optuna, an MLflow server, a checkpoint
      and MLflow logging every epoch.
It prints the wall-time ratio (b)/(a) and where the extra time goes, (c) the same sweep on a
Ray and an MLflow that already run, and (d) the floor: what Ray and Tune alone cost for one
trial that does nothing but import the workload, the part no change to emosweep can remove.
`--repeat N` runs N interleaved rounds, each in a fresh home, and reports the medians.

    python bench/trial_overhead.py                   # a job of about a minute on 2 CPU cores
    python bench/trial_overhead.py --train-size 200  # shorter
    python bench/trial_overhead.py --repeat 3        # medians of three interleaved rounds
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smallest import parse  # noqa: E402  (bench/, beside this file)

ROOT = Path(__file__).resolve().parents[1]


def job_config(args) -> dict:
    return {"train_size": args.train_size, "val_size": args.eval_size, "test_size": args.eval_size,
            "epochs": args.epochs, "max_length": args.max_length, "batch_size": 16, "lr": 3e-5,
            "warmup_ratio": 0.1, "weight_decay": 0.01}


def plain(args) -> None:
    """(a): the job as a plain PyTorch loop, using the workload's own data and model builders."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from workloads import bert_nli
    from workloads.models.encoders import load_tokenizer
    from workloads.models.shelf import shelf_model_path

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    config = {**job_config(args), "seed": 42, "data_dir": None, "model_path": shelf_model_path("minilm"),
              "strategy": "full"}
    loaders = bert_nli.build_loaders(config, load_tokenizer(config["model_path"]))
    model, _ = bert_nli.build_model(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    total = config["epochs"] * len(loaders["train"])
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * total), total)
    setup_s = time.perf_counter() - t0
    device = torch.device("cpu")
    for epoch in range(config["epochs"]):
        model.train()
        for batch in loaders["train"]:
            loss, _, _ = bert_nli._step(model, batch, device)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            for split in ("val", "test"):
                correct = n = 0
                for batch in loaders[split]:
                    _, logits, y = bert_nli._step(model, batch, device)
                    correct += int((logits.argmax(-1) == y).sum())
                    n += len(y)
    print(json.dumps({"setup_s": setup_s, "train_eval_s": time.perf_counter() - t0 - setup_s}))


def _noop_trial(config):
    import importlib

    importlib.import_module("workloads.bert_nli")  # what any S3 trial imports (PyTorch, transformers)


def floor(args) -> None:
    """(d): Ray and Tune's own cost for one trial on this machine: start Ray as the runner
    does (lean, no dashboard), run one Tune trial that only imports the workload, exit.
    Nothing of emosweep's (no MLflow, no data, no checkpoints)."""
    import ray
    from ray import tune

    from workloads.core.ray_start import start_ray

    start_ray(args.address, **({} if args.address else {"num_cpus": args.threads}))
    tune.Tuner(tune.with_resources(_noop_trial, {"cpu": args.threads}),
               run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="emosweep-floor-"), verbose=0)).fit()
    ray.shutdown()


def timed(cmd: list[str], env: dict) -> tuple[float, str, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return wall, out.stdout, out.stderr


def warm_sweep(sweep_cmd: list[str], env: dict, work: Path, threads: int, floor_cmd: list[str]) -> tuple[float, float]:
    """(c): the cluster setting. A Ray head and an MLflow server are already running (started
    here, untimed), and the sweep joins them with --address and --tracking-uri."""
    from ray._private.services import get_node_ip_address

    from workloads.core import secrets
    from workloads.core.mlflow_server import MlflowServer, free_port

    # as cluster.yaml's nodes run: Ray's token auth on, the token in a file of the head's, every
    # process that joins told both (a join by address never turns token auth on by itself)
    token = secrets.make(work / secrets.DEFAULT_DIR)[secrets.RAY_TOKEN]
    env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token.resolve())}
    port = free_port()
    started = subprocess.run(["ray", "start", "--head", f"--port={port}", f"--num-cpus={threads}",
                              "--include-dashboard=false"], capture_output=True, text=True, env=env)
    if started.returncode != 0:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, env=env)
        sys.exit(f"`ray start --head --port={port}` failed (exit {started.returncode}):\n"
                 f"{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
    # this head's own address, as `ray start` made it (the node's IP and the port), not "auto":
    # "auto" joins whichever Ray on the machine started last, another sweep's in the suite
    address = f"{get_node_ip_address()}:{port}"
    try:
        with MlflowServer(work / "mlflow-warm") as server:
            wall, _, _ = timed([*sweep_cmd, "--name", "overhead-warm", "--address", address,
                                "--tracking-uri", server.uri], env)
        floor_wall, _, _ = timed([*floor_cmd, "--address", address], env)
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, env=env)
    return wall, floor_wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=int, default=640)
    p.add_argument("--eval-size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (and CPUs per trial)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of (a), (b), (c), interleaved; medians reported")
    p.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    args = parse(p, train_size=50, eval_size=16, epochs=1)
    if args.plain:
        return plain(args)
    if args.floor:
        return floor(args)

    size = ["--train-size", str(args.train_size), "--eval-size", str(args.eval_size), "--epochs", str(args.epochs),
            "--max-length", str(args.max_length), "--threads", str(args.threads)]
    # The same job both ways: the plain loop trains the shelf's MiniLM as it is, so the sweep
    # does not trim its vocabulary to FarsTail's pieces either (that would train a smaller model)
    sets = [x for k, v in {**job_config(args), "trim_vocab": False}.items() for x in ("--set", f"{k}={v}")]
    sweep_args = ["sweeps/bert_freezing.py", "--arms", "full", "--model", "minilm",
                  "--cpus-per-trial", str(args.threads), "--verbose", "0", *sets]
    runs = []  # (a), (b), (c) interleaved, each round in a fresh EMOSWEEP_HOME: the machine's drift hits all three
    for round_ in range(args.repeat):
        work = Path(tempfile.mkdtemp(prefix="emosweep-bench-"))
        env = {**os.environ, "EMOSWEEP_HOME": str(work), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        sweep_cmd = [sys.executable, *sweep_args]
        plain_wall, plain_out, _ = timed([sys.executable, __file__, "--plain", *size], env)
        sweep_wall, sweep_out, _ = timed([*sweep_cmd, "--name", "overhead"], env)
        from workloads.core.mlflow_server import SharedServer

        SharedServer(work / "mlflow").stop()  # the cold sweep started this home's shared server; (c) brings its own
        floor_cmd = [sys.executable, __file__, "--floor", *size]
        warm_wall, warm_floor_wall = warm_sweep(sweep_cmd, env, work, args.threads, floor_cmd)
        floor_wall, _, _ = timed(floor_cmd, env)
        import_wall, _, _ = timed([sys.executable, "-c", "import workloads.bert_nli"], env)
        runs.append((plain_wall, sweep_wall, warm_wall, plain_out, sweep_out, work, floor_wall - import_wall,
                     warm_floor_wall - import_wall))
        print(f"round {round_ + 1}: plain {plain_wall:.1f} s, cold sweep {sweep_wall:.1f} s "
              f"({sweep_wall / plain_wall:.2f}), warm sweep {warm_wall:.1f} s ({warm_wall / plain_wall:.2f})",
              flush=True)
    cold = sorted(r[1] / r[0] for r in runs)
    warm = sorted(r[2] / r[0] for r in runs)
    median = len(runs) // 2  # the middle round by cold ratio gives the breakdown
    plain_wall, sweep_wall, warm_wall, plain_out, sweep_out, work, floor_s, warm_floor_s = sorted(runs, key=lambda r: r[1] / r[0])[median]
    plain_parts = json.loads(plain_out.strip().splitlines()[-1])
    driver = dict(re.findall(r"(\w+_s)=([\d.]+)", sweep_out.split("driver timings:")[-1]))
    driver = {k: float(v) for k, v in driver.items()}
    results = [json.loads(line) for line in next((work / "ray" / "overhead").glob("*/result.json")).read_text().splitlines()]
    per_epoch = {k: sum(r.get(k, 0.0) for r in results) for k in
                 ("time_train_s", "time_eval_s", "time_tracking_s", "time_checkpoint_s")}
    trial_total = results[-1]["time_total_s"]
    trial_setup = trial_total - sum(per_epoch.values())

    ratio = sweep_wall / plain_wall
    if len(runs) > 1:
        print(f"\n{len(runs)} rounds: cold ratio median {cold[median]:.2f} (range {cold[0]:.2f}-{cold[-1]:.2f}), "
              f"warm ratio median {warm[median]:.2f} (range {warm[0]:.2f}-{warm[-1]:.2f}); "
              "the breakdown below is the median round's")
    print(f"\njob: MiniLM full fine-tuning, {args.train_size} train / {args.eval_size} val+test pairs, "
          f"{args.epochs} epochs, max_length {args.max_length}, {args.threads} threads")
    print(f"{'(a) plain PyTorch loop, end to end':48s} {plain_wall:8.1f} s")
    print(f"{'(b) one-trial sweep via the runner, end to end':48s} {sweep_wall:8.1f} s")
    print(f"{'ratio (b)/(a)':48s} {ratio:8.2f}   (target <= 1.15)")
    print(f"{'(c) the same sweep on a running Ray + MLflow':48s} {warm_wall:8.1f} s")
    print(f"{'ratio (c)/(a)':48s} {warm_wall / plain_wall:8.2f}   (cluster setting: Ray and MLflow already up)")
    print("(d) the floor, Ray + Tune alone: a process that runs one no-op trial (it only imports the")
    print("    workload, as the plain loop does too; those imports are subtracted)")
    print(f"{'    starting its own Ray':48s} {floor_s:8.1f} s   -> no Tune sweep of this job beats "
          f"{(plain_wall + floor_s) / plain_wall:.2f} cold")
    print(f"{'    on the running Ray':48s} {warm_floor_s:8.1f} s   -> nor {(plain_wall + warm_floor_s) / plain_wall:.2f} warm\n")
    print("where (b) spends its time:")
    rows = [
        ("driver: ray.init (MLflow server boots meanwhile)", driver.get("ray_init_s", 0)),
        ("driver: further wait for the MLflow server", driver.get("mlflow_ready_s", 0)),
        ("trial: worker start, imports, data + model setup", trial_setup),
        ("trial: training", per_epoch["time_train_s"]),
        ("trial: evaluation (val every epoch, test on improvement)", per_epoch["time_eval_s"]),
        ("trial: MLflow logging (metrics, plots, reports)", per_epoch["time_tracking_s"]),
        ("trial: checkpoint written each epoch", per_epoch["time_checkpoint_s"]),
        ("driver: interpreter start, imports, exit (outside its own clock)", sweep_wall - driver.get("total_s", 0)),
        ("driver: prepare (data and model resolution)", driver.get("prepare_s", 0)),
        ("driver: Tune scheduling, parent run, table (the rest of its clock)",
         driver.get("total_s", 0) - driver.get("ray_init_s", 0) - driver.get("mlflow_ready_s", 0)
         - driver.get("prepare_s", 0) - trial_total),
    ]
    for name, secs in rows:
        print(f"  {name:58s} {secs:7.1f} s")
    print(f"plain loop for comparison: setup {plain_parts['setup_s']:.1f} s, train+eval "
          f"{plain_parts['train_eval_s']:.1f} s (+ interpreter start and imports)")


if __name__ == "__main__":
    main()
