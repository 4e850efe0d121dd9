"""`emosweep`: the command line. Subcommands grow with the platform.

    emosweep studies                 list the runnable studies
    emosweep run STUDY [flags]       run one (the same flags as python sweeps/STUDY.py)
    emosweep data prepare CORPUS --root DIR --features STAGE [STAGE ...]
                                     decode a corpus and cache its features (Ray Data)
    emosweep demo [--run-id RUN]     the fusion study's best model in a web page (Gradio)
    emosweep predict FILE --run-id RUN
                                     the top-2 emotions of an audio file, from a trial's model
    emosweep tracking [--stop]       where this machine's shared MLflow server listens; stop it
    emosweep ray [--stop]            the local Ray the sweeps share (kept while in use); stop it
    emosweep ui [SWEEP]              open a sweep's arms in the MLflow UI (the latest sweep by default)
    emosweep compare SWEEP SWEEP …   rank arms across corpora: Friedman, Nemenyi, CD diagram, Bayesian signed-rank
    emosweep export emobox SWEEP --out DIR
                                     a sweep's per-item test predictions in EmoBox's layout
    emosweep secrets [DIR]           a cluster's Ray token and MLflow password (before `ray up`), masked
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from workloads.core.paths import mask_uri


# the engine's own modules; every other module of sweeps/ is a study file
ENGINE_MODULES = {"runner", "study", "space", "search", "callbacks", "storage", "results", "report", "local", "cli",
                  "verdicts", "compare", "export"}


def discover_studies() -> dict:
    """Every module in `sweeps/` that defines STUDY, by study name."""
    import sweeps

    found = {}
    for info in pkgutil.iter_modules(sweeps.__path__):
        if info.name in ENGINE_MODULES:
            continue
        module = importlib.import_module(f"sweeps.{info.name}")
        study = getattr(module, "STUDY", None)
        if study is not None:
            found[study.name] = (info.name, study)
    return dict(sorted(found.items()))


def build_parser() -> argparse.ArgumentParser:
    """The `emosweep` command line (a study's own flags, after `run STUDY`, are its parser's)."""
    parser = argparse.ArgumentParser(prog="emosweep", description="Ray-distributed emotion-research sweeps")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("studies", help="list the runnable studies")
    run = sub.add_parser("run", help="run a study (pass --help after the name for its flags)", add_help=False)
    run.add_argument("study")
    data = sub.add_parser("data", help="corpus readers, feature extraction and the cache")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    add_prepare_parser(data_sub)
    verify = data_sub.add_parser("verify", help="check every cached file in full; move damaged ones aside",
                                 description="Check each cached file against the size and SHA-256 recorded "
                                             "when it was written, and read every page against its checksum. "
                                             "A damaged file is moved to its stage's damaged/ folder, and the "
                                             "next run recomputes its items. Exit 1 when any was found.")
    verify.add_argument("path", nargs="?", help="a cache root, one corpus or one stage folder "
                                                "(default: $EMOSWEEP_HOME/cache)")
    from workloads import demo, predict

    from sweeps import compare, export, page

    demo.add_parser(sub)
    page.add_parser(sub)
    predict.add_parser(sub)
    compare.add_parser(sub)
    export.add_parser(sub)
    tracking = sub.add_parser("tracking", help="the MLflow server the sweeps of $EMOSWEEP_HOME share")
    tracking.add_argument("--stop", action="store_true", help="stop it now")
    ray_cmd = sub.add_parser("ray", help="the local Ray the sweeps of $EMOSWEEP_HOME share")
    ray_cmd.add_argument("--stop", action="store_true", help="stop it now (sweeps using it lose their trials)")
    ui = sub.add_parser("ui", help="open a sweep's arms in the MLflow UI, starting the shared server if needed")
    ui.add_argument("sweep", nargs="?", help="the sweep's name or parent run id (default: the latest sweep)")
    ui.add_argument("--tracking-uri", help="MLflow server (default: $EMOSWEEP_TRACKING_URI, else the shared one)")
    ui.add_argument("--print-only", action="store_true", help="print the address; open no browser")
    ui.add_argument("--optuna", action="store_true",
                    help="open the sweep's Optuna studies in optuna-dashboard instead (search history, parallel "
                         "coordinates, importances), served on loopback")
    ui.add_argument("--port", type=int, default=0, help="with --optuna: the dashboard's loopback port (default: a free one)")
    secrets_cmd = sub.add_parser("secrets", help="make a cluster's Ray token and MLflow password (0600 files, "
                                 "never committed) before `ray up cluster.yaml`; show them masked")
    secrets_cmd.add_argument("folder", nargs="?", default=".emosweep-secrets",
                             help="where (default: .emosweep-secrets, which cluster.yaml copies to every node)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    from workloads import demo, predict

    from sweeps import compare, export
    if rest and args.command != "run":  # only `run` passes its flags on, to the study
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "tracking":
        return tracking_command(args)
    if args.command == "ray":
        return ray_command(args)
    if args.command == "ui":
        return optuna_command(args) if args.optuna else ui_command(args)
    if args.command == "report":
        from sweeps import page

        return page.report_command(args)
    if args.command == "secrets":
        return secrets_command(args)
    if args.command == "data":
        return data_verify(args) if args.data_command == "verify" else data_prepare(args)
    if args.command in ("compare", "export"):
        from workloads.core.errors import UserError

        try:
            return compare.compare_command(args) if args.command == "compare" else export.export_command(args)
        except UserError as e:
            print(f"emosweep {args.command}: {e}", file=sys.stderr)
            return 2
    if args.command in ("demo", "predict"):
        return (demo if args.command == "demo" else predict).main(args)

    studies = discover_studies()
    if args.command == "studies":
        width = max(len(n) for n in studies)
        for name, (module, study) in studies.items():
            summary = (study.description or "").strip().splitlines()[0] if study.description else ""
            print(f"{name:<{width}}  {len(study.arms)} arms  python sweeps/{module}.py  {summary}")
        return 0
    if args.study not in studies:
        parser.error(f"unknown study {args.study!r}; run `emosweep studies` to list them")
    from sweeps.runner import main as run_main

    run_main(studies[args.study][1], rest)
    return 0


def tracking_command(args) -> int:
    from workloads.core.mlflow_server import SharedServer
    from workloads.core.paths import emosweep_home

    server = SharedServer(emosweep_home() / "mlflow")
    info = server.running()
    if info is None:
        print(f"no MLflow server runs for {server.root}; the next sweep, demo or predict starts one")
        return 0
    if args.stop:
        server.stop()
        print(f"stopped the MLflow server at {info['uri']}")
        return 0
    if info.get("orphan"):
        print(f"MLflow server at {info['uri']} (pid {info['server_pid']}, store {server.root}) runs without its "
              f"keeper; the next sweep, demo or predict adopts it, and --stop stops it")
        return 0
    holders = [p.name for p in (server.root / "leases").glob("*")]
    print(f"MLflow server at {info['uri']} (keeper pid {info['keeper_pid']}, store {server.root}); "
          f"in use by {len(holders)} process(es); it stops {float(info.get('idle_s', server.idle_s)) / 60:.0f} min "
          f"after its last use")
    return 0


def ray_command(args) -> int:
    from workloads.core.paths import emosweep_home
    from workloads.core.shared_ray import SharedRay

    shared = SharedRay(emosweep_home() / "ray-local")
    info = shared.running()
    if info is None:
        print(f"no shared Ray runs for {shared.root}; the next sweep starts one")
        return 0
    if args.stop:
        shared.stop()
        print(f"stopped the shared Ray at {info.get('address', '(starting)')}")
        return 0
    print(f"shared Ray at {info.get('address', '(starting)')} (keeper pid {info['keeper_pid']}); in use by "
          f"{shared.holders()} sweep(s); it stops {float(info.get('idle_s', shared.idle_s)) / 60:.0f} min after its last use")
    return 0


def _latest_top(client, ids: list) -> list:
    """The sweep of the latest run with a study tag, found by following its parents up (a trial's
    parent is its arm's run or the sweep's): a sweep from before parents were tagged."""
    from workloads.core.tracking import TAG_PARENT

    runs = client.search_runs(ids, filter_string="tags.study != ''", order_by=["attributes.start_time DESC"],
                              max_results=1) if ids else []
    run = runs[0] if runs else None
    for _ in range(3):
        if run is None or TAG_PARENT not in run.data.tags:
            break
        run = client.get_run(run.data.tags[TAG_PARENT])
    return [run] if run is not None else []


def sweep_view(client, sweep: str | None) -> tuple[str, str]:
    """(the sweep's name, the path of its shared view) for a sweep's name or parent run id, or
    the latest sweep (a parent run: it has a study tag and no parent)."""
    from workloads.core.errors import UserError
    from workloads.core.tracking import TAG_PARENT

    from workloads.core.tracking import ROW_TAG

    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments]

    def search(where: str, n: int = 50) -> list:
        return [r for r in client.search_runs(ids, filter_string=where, order_by=["attributes.start_time DESC"],
                                              max_results=n) if TAG_PARENT not in r.data.tags] if ids else []

    # A sweep's parent is found by its own tag or name: a search of every run with a study tag
    # (every trial has one) would page through a 1,024-trial sweep's runs and miss its parent.
    if sweep:
        quoted = sweep.replace("'", "\\'")
        parents = search(f"attributes.run_name = '{quoted}' and tags.study != ''")
        if not parents and len(sweep) == 32 and all(c in "0123456789abcdef" for c in sweep):
            parents = search(f"attributes.run_id = '{sweep}'", 1)
    else:
        parents = search(f"tags.{ROW_TAG} = 'sweep'", 1) or _latest_top(client, ids)  # older sweeps: untagged
    if not parents:
        raise UserError(f"no sweep named {sweep!r} in this MLflow store" if sweep else "no sweep in this MLflow store "
                        "yet: run a study first (python sweeps/bert_freezing.py --smoke)")
    run = parents[0]
    experiment = next(e for e in experiments if e.experiment_id == run.info.experiment_id)
    key = f"sweep-{run.info.run_id[:12]}"
    view = (f"#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={key}"
            if f"mlflow.sharedViewState.{key}" in experiment.tags
            else f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    return run.info.run_name, view


def secrets_command(args) -> int:
    from workloads.core import secrets
    from workloads.core.errors import UserError

    try:
        made = secrets.make(args.folder)
        for name, path in made.items():
            value = secrets.read(path)
            print(f"{path}  {value if name == secrets.MLFLOW_USER else secrets.masked(value)}")
    except (UserError, OSError) as e:
        print(f"emosweep secrets: {e}", file=sys.stderr)
        return 2
    print("kept out of git (.gitignore); `ray up cluster.yaml` copies the folder to every node")
    return 0


def ui_command(args) -> int:
    """Open the sweep's shared view (one row per arm, best first) in the user's browser; where
    none can be opened, print the address. The shared server stays up after this command, for
    its idle time."""
    import webbrowser

    from mlflow.tracking import MlflowClient

    from workloads.core.errors import UserError
    from workloads.core.tracking import fail_fast_requests, tracking_server

    fail_fast_requests()
    try:
        with tracking_server(args.tracking_uri) as uri:
            name, view = sweep_view(MlflowClient(uri), args.sweep)
    except UserError as e:
        print(f"emosweep ui: {e}", file=sys.stderr)
        return 2
    if not uri.startswith(("http://", "https://")):  # a store, not a server: no address to open
        print(f"{name}: {mask_uri(uri)} is a store with no server to browse. Open it with\n"
              f"  mlflow ui --backend-store-uri {mask_uri(uri)} --host 127.0.0.1\n"
              f"then, in the address it prints: {view}")
        return 0
    url = f"{uri.rstrip('/')}/{view}"
    opened = not args.print_only and webbrowser.open(url)
    print(f"{name}: {mask_uri(url)}" + ("" if opened else "  (open it in a browser)"))
    return 0


def optuna_command(args) -> int:
    """optuna-dashboard on a sweep's Optuna storage (its emosweep.json names it), on loopback,
    until Ctrl-C."""
    import json
    import shutil
    import subprocess
    import time
    import webbrowser

    from sweeps.page import find_folder
    from sweeps.storage import STATE_FILE
    from workloads.core.errors import UserError
    from workloads.core.paths import emosweep_home, mask_uri
    from workloads.core.mlflow_server import free_port, listens

    if args.tracking_uri:
        print("emosweep ui --optuna: --tracking-uri names an MLflow server; the Optuna studies are the sweep's own "
              "(its --optuna-storage)", file=sys.stderr)
        return 2
    try:
        folder = find_folder(args.sweep, emosweep_home(), has=STATE_FILE)
        storage = json.loads((folder / STATE_FILE).read_text()).get("optuna_storage")
        if not storage:
            raise UserError(f"{folder.name} kept no Optuna studies (a sweep from before they were kept)")
        exe = shutil.which("optuna-dashboard")
        if exe is None:
            raise UserError("optuna-dashboard is not installed: pip install optuna-dashboard")
    except UserError as e:
        print(f"emosweep ui --optuna: {e}", file=sys.stderr)
        return 2
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen([exe, storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"])
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:  # the address is given once it answers
        if listens("127.0.0.1", port, timeout=1):
            break
        time.sleep(0.2)
    if proc.poll() is not None:
        print(f"emosweep ui --optuna: optuna-dashboard exited ({proc.returncode}) on {mask_uri(storage)}", file=sys.stderr)
        return 2
    opened = not args.print_only and webbrowser.open(url)
    print(f"{folder.name}: Optuna's dashboard at {url}" + ("" if opened else "  (open it in a browser)")
          + f"\n  storage {mask_uri(storage)}; Ctrl-C stops it", flush=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(10)
        return 0


def _param(text: str):
    """stage.key=value → (stage, key, value); value parsed as the sweeps' --set values are."""
    from workloads.core.config import parse_value

    try:
        target, value = text.split("=", 1)
        stage, key = target.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STAGE.KEY=VALUE, got {text!r}") from None
    from workloads.data.features import STAGES

    like = STAGES[stage].defaults.get(key) if stage in STAGES else None  # a boolean knob takes any spelling
    try:
        return stage, key, parse_value(value, like=like)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text}: {e}") from None


def add_prepare_parser(sub) -> None:
    from workloads.data.audio import MAX_FILE_MB, MAX_SECONDS
    from workloads.data.corpora import READERS
    from workloads.data.features import STAGES

    p = sub.add_parser("prepare", help="decode a corpus with FFmpeg on Ray Data and cache its features",
                       description="Read CORPUS in its native layout, decode every file to mono at the "
                                   "target rate, compute the feature stages and cache them as Parquet. "
                                   "A second run with the same corpus and stages does no decoding; a run "
                                   "cut short resumes.")
    p.add_argument("corpus", choices=["auto", *sorted(READERS)],
                   help="the corpus's reader, or auto: a manifest file, an EmoBox folder, or the layout its file "
                        "names tell")
    p.add_argument("--root", required=True, help="the corpus folder in its native layout (auto: or a manifest file)")
    p.add_argument("--media-root", help="where a manifest's or EmoBox's relative audio paths lie (default: beside it)")
    p.add_argument("--features", nargs="+", required=True, choices=sorted(STAGES), metavar="STAGE",
                   help=f"one or more of: {', '.join(STAGES)}")
    p.add_argument("--param", action="append", type=_param, default=[], metavar="STAGE.KEY=VALUE",
                   help="override a stage parameter, e.g. waveform.seconds=5")
    p.add_argument("--cache-dir", default=None,
                   help="cache root, a folder or a URI (default: $EMOSWEEP_HOME/cache)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (auto, or host:port)")
    p.add_argument("--strict", action="store_true", help="stop at the first unusable input instead of reporting it")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--shard-size", type=int, default=32, help="items per task and per cached shard")
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                   help=f"refuse (and report) an item longer than this, before decoding where its container says "
                        f"(default {MAX_SECONDS:g})")
    p.add_argument("--max-file-mb", type=float, default=MAX_FILE_MB,
                   help=f"refuse (and report) a file larger than this, without reading it (default {MAX_FILE_MB:g})")
    p.add_argument("--split-seed", type=int, default=42,
                   help="seed of the stratified train/val/test split for corpora without an official one")
    p.add_argument("--by-speaker", action="store_true", help="speaker-independent split")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="follow links that lead outside --root (by default such a link is reported, not read); "
                        "recorded with the corpus")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="Ray's own log lines on the terminal too (default: to a "
                   "file under $EMOSWEEP_HOME/logs, whose path is printed when Ray starts)")


def data_prepare(args) -> int:
    from workloads.core.errors import BadInput, UserError
    from workloads.data.corpora import read_corpus
    from workloads.data.manifest import assign_splits
    from workloads.data.pipeline import StrictModeError, prepare

    try:
        if args.corpus == "auto":
            from workloads.data.layouts import read_any

            manifest = read_any(args.root, media_root=args.media_root, follow_symlinks=args.follow_symlinks)
        elif args.media_root:
            raise BadInput("--media-root: only `auto` reads manifests and EmoBox folders")
        else:
            manifest = read_corpus(args.corpus, args.root, follow_symlinks=args.follow_symlinks)
        manifest.items = assign_splits(manifest.items, seed=args.split_seed, by_speaker=args.by_speaker)
    except (FileNotFoundError, ValueError, UserError) as e:
        print(f"emosweep data prepare: {e}", file=sys.stderr)
        return 2
    stages = {name: {} for name in args.features}
    for stage, key, value in args.param:
        if stage not in stages:
            print(f"emosweep data prepare: --param {stage}.{key}: {stage} is not among --features", file=sys.stderr)
            return 2
        stages[stage][key] = value
    print(manifest.summary())
    from workloads.core.console import quiet_logs, restore_logs
    from workloads.core.paths import emosweep_home

    if not args.verbose:  # Ray, if it starts (a cache that holds everything never starts it), logs to a file
        quiet_logs(emosweep_home() / "logs", "data-prepare", lazy=True)
    try:
        if args.address:  # otherwise Ray starts only if something is left to compute
            from workloads.core.ray_start import start_ray

            start_ray(address=args.address)
        try:
            result = prepare(manifest, stages, cache_dir=args.cache_dir, strict=args.strict,
                             sr=args.sample_rate, shard_size=args.shard_size, progress=not args.no_progress,
                             max_seconds=args.max_seconds, max_file_mb=args.max_file_mb)
        except StrictModeError as e:
            print(f"emosweep data prepare --strict: {e}", file=sys.stderr)
            return 1
        except ValueError as e:
            print(f"emosweep data prepare: {e}", file=sys.stderr)
            return 2
        print(result.summary())
        return 0
    finally:
        restore_logs()


def data_verify(args) -> int:
    from workloads.core.storage import filesystem
    from workloads.data.pipeline import default_cache_dir
    from workloads.data.shards import INDEX, check_stage

    import pyarrow.fs as pafs

    fs, root = filesystem(args.path or default_cache_dir())
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        print(f"emosweep data verify: {args.path or root}: no such cache folder", file=sys.stderr)
        return 2
    stages = sorted({os.path.dirname(i.path) for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                     if i.base_name == INDEX or (i.base_name.startswith("shard-") and "/damaged/" not in i.path)})
    damaged, files = [], 0
    for stage in stages:
        files += len(check_stage(fs, stage, full=True, found=damaged))
    files += sum(why != "missing" for _, why in damaged)
    print(f"{root}: {len(stages)} stages, {files} files checked, {len(damaged)} damaged"
          + (" (moved aside; the next run of their study or `emosweep data prepare` recomputes their items)"
             if damaged else ""))
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
