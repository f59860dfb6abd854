"""Build, inspect or remove the edge's compiled core (edge/native.py says what and why).

python -m edge.native_build build [--optional] [--force]   # no-op when up to date
python -m edge.native_build status                         # compiled, or why not
python -m edge.native_build clean
"""

from __future__ import annotations

import sys

from edge.native import build, clean, status


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edge.native_build", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="compile the core in place (no-op if up to date)")
    build_cmd.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build_cmd.add_argument(
        "--optional",
        action="store_true",
        help="on failure (no C compiler, say) warn and exit 0: the edge runs interpreted",
    )
    sub.add_parser("status", help="say whether the edge would run compiled")
    sub.add_parser("clean", help="remove the compiled modules")
    args = parser.parse_args(argv)

    if args.command == "status":
        print(status())
        return 0
    if args.command == "clean":
        clean()
        print("edge native build removed")
        return 0
    try:
        built = build(force=args.force)
    except (Exception, SystemExit) as error:  # setuptools reports a failed compile by exiting
        clean()
        print(f"edge native build failed: {error}", file=sys.stderr)
        if args.optional:
            print("the edge will run its Python source (slower, same behaviour)", file=sys.stderr)
            return 0
        return 1
    print("edge native build: " + ("compiled" if built else "up to date"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
