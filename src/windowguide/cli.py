"""The ``windowguide`` command line."""
from __future__ import annotations

import argparse
import os
import sys


def _toy(args) -> int:
    from .toy import EXPERIMENTS
    exp = EXPERIMENTS[args.name]
    out = args.out or os.path.join("runs", "toy", args.name)
    report = exp.run(out_dir=out, json_path=args.json)
    print(exp.summary(report))
    for path in report.get("figures", []):
        print(f"figure: {path}")
    if args.json:
        print(f"report: {args.json}")
    return 0


def _bench(args) -> int:
    if args.what == "speed":
        from .bench import speed
        report = speed.run(args.json, quick=args.quick, device=args.device)
        print(speed.format_report(report))
    if args.json:
        print(f"report: {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .toy import EXPERIMENTS
    p = argparse.ArgumentParser(prog="windowguide", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    toy = sub.add_parser("toy", help="2-D experiments with exact ground truth")
    toy.add_argument("name", choices=sorted(EXPERIMENTS))
    toy.add_argument("--json", help="write the report here")
    toy.add_argument("--out", help="folder for figures (default runs/toy/NAME)")
    toy.set_defaults(func=_toy)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench.add_argument("what", choices=["speed"])
    bench.add_argument("--json", help="write the report here")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    bench.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    bench.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as e:   # bad input: one clear line, not a traceback
        print(f"windowguide: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

