"""Command line: ``prostate-course {run, env, synth, prepare, report, publish, student-edition}``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


#: Exit status after Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


def cmd_run(args) -> int:
    from .profile import UnknownProfileError, load_profile, parse_override, resolve_profile_name
    from .runner import CourseInterrupted, NotebookFailed, run_course

    name = resolve_profile_name(args.profile)
    try:
        overrides = dict(parse_override(s) for s in args.set or [])
        profile = load_profile(name, overrides)
    except (UnknownProfileError, ValueError) as e:  # unknown profile, bad --set, bad profile
        return _user_error(e)
    try:
        run_course(profile, only=args.only, overrides=overrides or None,
                   notebooks=Path(args.notebooks) if args.notebooks else None,
                   ensure_data=not args.no_data)
    except NotebookFailed as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    except CourseInterrupted as e:
        print(f"\n{e.summary()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before the first notebook started
        print("\ninterrupted before any notebook ran.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FileNotFoundError, ValueError) as e:  # no notebooks, no PI-CAI data, bad data.split
        return _user_error(e)
    if args.publish:
        from .publish import publish

        print(f"published: {publish(profile.name, args.publish)}")
    return 0


def cmd_publish(args) -> int:
    from .publish import publish

    try:
        print(f"published: {publish(args.profile, args.out)}")
    except FileNotFoundError as e:
        return _user_error(e)
    return 0


def cmd_env(args) -> int:
    from .repro import format_environment_report

    print(format_environment_report())
    return 0


def _user_error(e: BaseException) -> int:
    """One-line message for an input the user can fix (bad folder, other settings, bad case)."""
    print(f"error: {e}", file=sys.stderr)
    return 2


def cmd_synth(args) -> int:
    from .data.synthetic import generate_cohort

    try:
        out = generate_cohort(args.out, n_cases=args.cases, seed=args.seed, workers=args.workers)
    except (ValueError, TypeError, OSError) as e:
        return _user_error(e)
    print(f"synthetic cohort of {args.cases} cases (seed {args.seed}) in {out}")
    return 0


def _triple(text: str) -> tuple:
    parts = [p for p in text.replace("x", ",").split(",") if p]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected one or three numbers (z,y,x), got {text!r}")
    return tuple(float(p) for p in parts)


def _int_triple(text: str) -> tuple:
    values = _triple(text)
    if any(v != int(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected integers (voxels), got {text!r}")
    return tuple(int(v) for v in values)


def cmd_prepare(args) -> int:
    from .data.prepare import PrepareError, prepare_dataset

    try:
        report = prepare_dataset(args.raw, args.labels, args.out, spacing=args.spacing,
                                 crop=args.size, workers=args.workers,
                                 strict=args.strict, seed=args.seed, max_cases=args.max_cases)
    except (ValueError, PrepareError, OSError) as e:  # DataReadError is a ValueError
        return _user_error(e)
    print(report)
    return 0


def cmd_report(args) -> int:
    from .runner import write_report

    print(write_report(args.profile))
    return 0


def cmd_student_edition(args) -> int:
    from .editions import write_student_edition
    from .paths import notebooks_dir

    source = Path(args.notebooks) if args.notebooks else notebooks_dir()
    counts = write_student_edition(source, args.out)
    for name, n in counts.items():
        print(f"{name}: {n} solution cell(s) replaced by stubs")
    print(f"student edition in {Path(args.out).resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .profile import available_profiles, load_profile

    p = argparse.ArgumentParser(prog="prostate-course", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="execute the course notebooks with papermill for a profile")
    r.add_argument("--profile", default="smoke",
                   help=f"one of {', '.join(available_profiles())}, or auto (gpu if CUDA or MPS, else cpu)")
    r.add_argument("--only", nargs="+", metavar="NN", help="only these notebooks, e.g. --only 00 01")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a profile key, e.g. --set data.n_cases=20 (repeatable)")
    r.add_argument("--notebooks", help="folder of notebooks (default: the course's notebooks/)")
    r.add_argument("--no-data", action="store_true", help="do not prepare the dataset first")
    r.add_argument("--publish", metavar="DIR",
                   help="after the run, write a reference copy (report, figures, HTML notebooks) to DIR")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("env", help="print the environment report")
    e.set_defaults(func=cmd_env)

    s = sub.add_parser("synth", help="write a synthetic cohort in the raw PI-CAI layout")
    s.add_argument("--cases", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="folder that receives images/ and labels/")
    s.add_argument("--workers", type=int, default=None)
    s.set_defaults(func=cmd_synth)

    pr = sub.add_parser("prepare", help="raw layout (synthetic or PI-CAI) -> prepared dataset")
    pr.add_argument("--raw", required=True, help="the images/ folder (<pid>/<pid>_<sid>_<seq>.mha)")
    pr.add_argument("--labels", required=True, help="a picai_labels folder")
    pr.add_argument("--out", required=True)
    cpu = load_profile("cpu").data  # defaults: the cpu profile's, so there is one source of them
    spacing, size = tuple(cpu["spacing"]), tuple(cpu["crop"])
    pr.add_argument("--spacing", type=_triple, default=spacing,
                    help=f"mm, z,y,x (default {','.join(f'{v:g}' for v in spacing)}: the cpu profile)")
    pr.add_argument("--size", type=_int_triple, default=size,
                    help=f"crop in voxels, z,y,x (default {','.join(map(str, size))}: the cpu profile)")
    pr.add_argument("--workers", type=int, default=None)
    pr.add_argument("--seed", type=int, default=0, help="seed of the splits")
    pr.add_argument("--max-cases", type=int, default=None)
    pr.add_argument("--strict", action="store_true", help="stop at the first bad case")
    pr.set_defaults(func=cmd_prepare)

    rep = sub.add_parser("report", help="(re)write runs/<profile>/report.md from the results files")
    rep.add_argument("--profile", required=True)
    rep.set_defaults(func=cmd_report)

    pu = sub.add_parser("publish", help="write a finished run as a readable reference (report, figures, HTML)")
    pu.add_argument("--profile", required=True)
    pu.add_argument("--out", required=True, help="e.g. docs/results/cpu")
    pu.set_defaults(func=cmd_publish)

    st = sub.add_parser("student-edition", help="copies of the notebooks with solutions stubbed")
    st.add_argument("--out", default="student", help="output folder (default: student, the folder the "
                    "Colab and Binder links open; regenerate it after editing notebooks/)")
    st.add_argument("--notebooks", help="source folder (default: the course's notebooks/)")
    st.set_defaults(func=cmd_student_edition)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
