"""`emosweep`: the command line. Subcommands grow with the platform.

    emosweep studies                 list the runnable studies
    emosweep run STUDY [flags]       run one (the same flags as python sweeps/STUDY.py)
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def discover_studies() -> dict:
    """Every module in `sweeps/` that defines STUDY, by study name."""
    import sweeps

    found = {}
    for info in pkgutil.iter_modules(sweeps.__path__):
        if info.name == "runner":
            continue
        module = importlib.import_module(f"sweeps.{info.name}")
        study = getattr(module, "STUDY", None)
        if study is not None:
            found[study.name] = (info.name, study)
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="emosweep", description="Ray-distributed emotion-research sweeps")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("studies", help="list the runnable studies")
    run = sub.add_parser("run", help="run a study (pass --help after the name for its flags)", add_help=False)
    run.add_argument("study")
    args, rest = parser.parse_known_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
