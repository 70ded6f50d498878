"""`boxbox config`: print complete example configs, check a config file, print the reference."""

from __future__ import annotations

import argparse
import sys

from boxbox import config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    ex = sub.add_parser("example", help="print a complete commented config")
    ex.add_argument("role", choices=sorted(config.SCHEMAS))
    ck = sub.add_parser("check", help="validate a config file")
    ck.add_argument("role", choices=sorted(config.SCHEMAS))
    ck.add_argument("file")
    sub.add_parser("reference", help="print the configuration reference (Markdown)")


def main(args: argparse.Namespace) -> int:
    if args.action == "example":
        sys.stdout.write(config.example(args.role))
    elif args.action == "check":
        config.load(args.file, args.role)
        print(f"{args.file}: ok")
    else:
        sys.stdout.write(config.reference_markdown())
    return 0
