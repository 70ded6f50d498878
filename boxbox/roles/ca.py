"""`boxbox ca`: the certificate authority (replaces bbstored-certs)."""

from __future__ import annotations

import argparse
import datetime as dt

from boxbox.ca import authority
from boxbox.ca.index import format_time
from boxbox.ca.names import parse_account
from boxbox.errors import BoxboxError, PermissionDenied, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("init", help="make a CA: CADIR/ca.key (0600), ca.crt, crl.pem")
    p.add_argument("cadir", metavar="CADIR")
    p.add_argument("--days", type=int, default=authority.DEFAULT_CA_DAYS,
                   help=f"CA lifetime in days (default {authority.DEFAULT_CA_DAYS})")

    p = sub.add_parser("sign-server", help="make server.key + server.crt + ca.crt in --out DIR")
    p.add_argument("cadir", metavar="CADIR")
    p.add_argument("hostname", metavar="HOSTNAME", help="name clients connect to (CN and subjectAltName)")
    p.add_argument("alt_names", metavar="ALTNAME", nargs="*", help="more DNS names or IP addresses")
    _out_days(p)

    p = sub.add_parser("sign-client", help="make client.crt (+ client.key unless --csr) + ca.crt in --out DIR")
    p.add_argument("cadir", metavar="CADIR")
    p.add_argument("account", metavar="ACCOUNT", help="account number in hex, like 1 or 0a1")
    p.add_argument("--csr", metavar="FILE", help="sign this request (from `boxbox ca request`) instead of making a key")
    _out_days(p)

    p = sub.add_parser("request", help="on the client: make client.key + client.csr in --out DIR")
    p.add_argument("account", metavar="ACCOUNT", help="account number in hex, like 1 or 0a1")
    p.add_argument("--out", metavar="DIR", required=True)

    p = sub.add_parser("list", help="what this CA issued: serial, kind, CN, expiry, revocation")
    p.add_argument("cadir", metavar="CADIR")

    p = sub.add_parser("revoke", help="revoke a certificate by serial and rewrite CADIR/crl.pem")
    p.add_argument("cadir", metavar="CADIR")
    p.add_argument("serial", metavar="SERIAL", help="serial number as shown by `boxbox ca list`")


def _out_days(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", required=True, help="directory for the files (made if missing)")
    p.add_argument("--days", type=int, default=authority.DEFAULT_CERT_DAYS,
                   help=f"certificate lifetime in days (default {authority.DEFAULT_CERT_DAYS})")


def main(args: argparse.Namespace) -> int:
    try:
        _run(args)
    except PermissionError as e:
        raise PermissionDenied(f"{e.filename}: {e.strerror}") from None
    except OSError as e:  # a full disc, a read-only mount, a path through a plain file
        raise BoxboxError(f"{e.filename}: {e.strerror}") from None
    return 0


def _run(args: argparse.Namespace) -> None:
    if args.action == "init":
        cert = authority.init_ca(args.cadir, days=args.days)
        print(f"CA certificate: {cert}")
        print(f"keep {cert.parent}/ca.key secret (ideally on a machine that is not the server)")
    elif args.action == "sign-server":
        s = authority.sign_server(args.cadir, args.hostname, args.out, days=args.days, alt_names=args.alt_names)
        _report(s)
    elif args.action == "sign-client":
        s = authority.sign_client(args.cadir, parse_account(args.account), args.out, csr=args.csr, days=args.days)
        _report(s)
    elif args.action == "request":
        csr = authority.make_request(parse_account(args.account), args.out)
        print(f"key: {csr.parent / authority.CLIENT_KEY} (stays here)")
        print(f"request: {csr} (sign it with `boxbox ca sign-client CADIR {args.account} --csr {csr} --out DIR`)")
    elif args.action == "list":
        _list(args.cadir)
    else:
        crl = authority.revoke(args.cadir, _parse_serial(args.serial))
        print(f"revoked serial {args.serial}; CRL: {crl} (copy it to the server)")


def _report(s: authority.Signed) -> None:
    print(f"serial {s.serial}: {s.cn}, expires {format_time(s.not_after)}")
    print(f"certificate: {s.cert}")
    if s.key is not None:
        print(f"key: {s.key} (mode 0600)")


def _list(cadir: str) -> None:
    issued = authority.list_issued(cadir)
    now = dt.datetime.now(dt.timezone.utc)
    print(f"{'SERIAL':>6}  {'KIND':6}  {'EXPIRES':20}  {'STATUS':28}  CN")
    for i in issued:
        status = (f"revoked {format_time(i.revoked)}" if i.revoked
                  else "expired" if i.not_after < now else "valid")
        print(f"{i.serial:>6}  {i.kind:6}  {format_time(i.not_after):20}  {status:28}  {i.cn}")


def _parse_serial(text: str) -> int:
    if not text.isdigit():
        raise UsageError(f"serial must be a decimal number as shown by `boxbox ca list`, got {text!r}")
    return int(text)
