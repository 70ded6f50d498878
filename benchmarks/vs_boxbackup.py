#!/usr/bin/env python3
"""boxbox against Box Backup (stock and with TCP_NODELAY), restic and borg on one generated workload.

Installs nothing. Peers that are not installed are skipped with a message; on Debian:

    apt-get install -y boxbackup-server boxbackup-client restic borgbackup

Workload (benchmarks/peers/workload.py, deterministic seed): at scale 1.0 about 10,000 files
and 300 MB (small text/binary files in nested directories, medium files, three large files
half random half text); `--quick` uses scale 0.05. Then a mutation: 1% of small files edited
in place, appends to medium files, 100 bytes inserted near the start of a large file, 1 MiB
overwritten in the middle of another, a 500-file directory renamed, deletions, new files.

Phases, run for every system interleaved (phase by phase, same source tree): first backup,
no-change run, incremental, full restore (every restored file hashed against the source).
boxbox and Box Backup run over loopback TLS with the store on three RAID directories; Box
Backup runs in snapshot mode (AutomaticBackup = no, each phase `bbackupctl sync-and-wait`),
its server as the `bbstored` user; "bb-nodelay" runs it again with every Box Backup process
under an LD_PRELOAD shim (built here with gcc) that sets TCP_NODELAY on its TCP sockets.
restic and borg back up to local repositories.

Measured (see benchmarks/peers/measure.py): wall; CPU of client + server (rusage of the
commands, /proc/PID/stat of the daemons, reaped children included); bytes over the socket
(loopback counters of a private network namespace: the script re-executes itself under
`unshare -n`, so only the measured system's traffic is counted, TCP/IP headers included;
for restic/borg the column shows the repository's growth instead); store size (apparent
bytes of the three disc directories / the repository); peak RSS of each side (rusage
ru_maxrss, or VmHWM of the daemon and its children sampled every 20 ms).

The last line is machine-readable (ratios boxbox / Box Backup-with-nodelay):

    RESULT initial_ratio=X nochange_ratio=X incremental_ratio=X restore_ratio=X store_ratio=X \
incr_bytes_ratio=X client_rss_mib=X [restic_initial_ratio=X restic_restore_ratio=X]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peers import workload  # noqa: E402
from benchmarks.peers import measure  # noqa: E402
from benchmarks.peers.measure import HwmSampler, Result  # noqa: E402
from benchmarks.peers.systems import Borg, BoxBackup, Boxbox, Driver, Restic, build_runrss, build_shim  # noqa: E402

PHASES = ("first", "nochange", "incremental", "restore")
NETNS_FLAG = "BOXBOX_BENCH_NETNS"


def reexec_in_netns() -> None:
    """Run this script again in a private network namespace (its own loopback counters)."""
    if os.environ.get(NETNS_FLAG) or os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return
    env = dict(os.environ, **{NETNS_FLAG: "1"})
    cmd = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable,
           *sys.argv]
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return
    os.execvpe("unshare", cmd, env)


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="scale 0.05 (~15 MB, ~500 files)")
    ap.add_argument("--scale", type=float, help="workload scale (1.0: ~10,000 files, ~300 MB)")
    ap.add_argument("--no-stock", action="store_true", help="skip stock Box Backup (slow at full scale)")
    ap.add_argument("--only", help="comma-separated systems to run (boxbox,bb-nodelay,bb-stock,restic,borg)")
    ap.add_argument("--profile", metavar="DIR", help="run boxbox's client/query under cProfile, .prof files in DIR")
    ap.add_argument("--dir", help="parent of the work directory (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    reexec_in_netns()
    netns = bool(os.environ.get(NETNS_FLAG))
    scale = args.scale or (0.05 if args.quick else 1.0)
    work = Path(tempfile.mkdtemp(prefix="boxbox-vs-bb-", dir=args.dir))
    os.chmod(work, 0o755)  # bbstored runs as its own user and must reach its discs
    sampler = HwmSampler()
    drivers: list[Driver] = []
    runrss = build_runrss(work)
    measure.RUNRSS = str(runrss) if runrss else None
    started = time.perf_counter()
    try:
        src = work / "src"
        t0 = time.perf_counter()
        nfiles, nbytes = workload.make_tree(src, scale)
        print(f"workload: scale {scale}: {nfiles} files, {nbytes / 1e6:.1f} MB "
              f"(made in {time.perf_counter() - t0:.1f} s) in {work}", flush=True)
        if runrss is None:
            print("note: no gcc: client peak RSS includes this script's own (ru_maxrss carries it over exec)")
        if not netns:
            print("note: no private network namespace (needs root + unshare): socket bytes are the "
                  "machine's whole loopback traffic during each phase", flush=True)

        want = set(args.only.split(",")) if args.only else {"boxbox", "bb-nodelay", "bb-stock", "restic", "borg"}
        if args.no_stock:
            want.discard("bb-stock")
        profile = Path(args.profile).resolve() if args.profile else None
        if profile:
            profile.mkdir(parents=True, exist_ok=True)
        if "boxbox" in want:
            drivers.append(Boxbox(work / "boxbox", src, sampler, profile))
        have_bb = all(shutil.which(x) for x in ("bbstored", "bbackupd", "bbackupctl", "bbackupquery",
                                                 "bbstoreaccounts", "bbstored-certs", "raidfile-config"))
        if not have_bb and want & {"bb-nodelay", "bb-stock"}:
            print("skip Box Backup: not installed (apt-get install -y boxbackup-server boxbackup-client)")
        elif have_bb and os.geteuid() != 0 and want & {"bb-nodelay", "bb-stock"}:
            print("skip Box Backup: run as root (bbstored switches to the bbstored user; bbackupd runs as root)")
            have_bb = False
        if have_bb and "bb-nodelay" in want:
            shim = build_shim(work)
            if shim is None:
                print("skip bb-nodelay: gcc not found to build the TCP_NODELAY shim")
            else:
                drivers.append(BoxBackup(work / "bb-nodelay", src, sampler, shim, "bb-nodelay"))
        if have_bb and "bb-stock" in want:
            drivers.append(BoxBackup(work / "bb-stock", src, sampler, None, "bb-stock"))
        for tool, cls in (("restic", Restic), ("borg", Borg)):
            if tool in want:
                if shutil.which(tool):
                    drivers.append(cls(work / tool, src, sampler))
                else:
                    print(f"skip {tool}: not installed (apt-get install -y {'borgbackup' if tool == 'borg' else tool})")
        for d in drivers:
            d.setup()
        print("systems: " + ", ".join(d.name for d in drivers), flush=True)

        results: dict[str, dict[str, Result]] = {d.name: {} for d in drivers}

        def phase(label: str) -> None:
            for d in drivers:
                r = d.backup(label)
                results[d.name][label] = r
                print(f"  {label:<12} {d.name:<11} {r.wall:8.2f} s  cpu {r.client_cpu:6.2f}+{r.server_cpu:5.2f}"
                      f"{'  ' + r.note if r.ok and r.note else ''}{'' if r.ok else '  FAILED ' + r.note}", flush=True)

        phase("first")
        phase("nochange")
        counts = workload.mutate(src, scale)
        print(f"mutation: {counts}, 100 B inserted in big/large0.img, 1 MiB overwritten in big/large1.img, "
              f"projects/archive renamed", flush=True)
        phase("incremental")
        expected = workload.digest_tree(src)
        for d in drivers:
            out = d.base / "restored"
            r = d.restore(out)
            if r.ok:
                diff = workload.compare(expected, workload.digest_tree(d.restored_root(out)))
                if diff:
                    r.ok = False
                    r.note = "restore differs: " + diff
            results[d.name]["restore"] = r
            print(f"  {'restore':<12} {d.name:<11} {r.wall:8.2f} s  cpu {r.client_cpu:6.2f}+{r.server_cpu:5.2f}  "
                  f"{'verified' if r.ok else 'FAILED ' + r.note}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        for d in drivers:
            if isinstance(d, BoxBackup) and d.shim is not None:
                print(f"{d.name}: TCP_NODELAY shim active in {d.shim_processes()} process(es)")

        report(results, drivers, netns)
        if profile and "boxbox" in results:
            print_profiles(profile, results["boxbox"])
        print(f"total benchmark time {time.perf_counter() - started:.0f} s")
        print(result_line(results))
    finally:
        for d in drivers:
            try:
                d.close()
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                print(f"stopping {d.name}: {e}", file=sys.stderr)
        sampler.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results: dict[str, dict[str, Result]], drivers: list[Driver], netns: bool) -> None:
    print()
    print("net MiB: bytes on loopback during the phase (TLS, TCP/IP headers included); for restic/borg "
          "(no socket) '+N' is the repository's growth")
    hdr = (f"{'phase':<12} {'system':<11} {'wall s':>8} {'cpu cli':>8} {'cpu srv':>8} {'net MiB':>8} "
           f"{'store MiB':>9} {'cli RSS':>8} {'srv RSS':>8}  ok")
    print(hdr)
    print("-" * len(hdr))
    for ph in PHASES:
        for d in drivers:
            r = results[d.name].get(ph)
            if r is None:
                continue
            if d.has_server:
                net = mib(r.net_bytes)
            else:
                prev = results[d.name].get({"first": "", "nochange": "first", "incremental": "nochange"}.get(ph, ""))
                net = "+" + mib(r.store_bytes - (prev.store_bytes if prev else 0)) if ph != "restore" else "-"
            srv_rss = mib(r.server_rss_kib * 1024) if d.has_server else "-"
            print(f"{ph:<12} {d.name:<11} {r.wall:8.2f} {r.client_cpu:8.2f} {r.server_cpu:8.2f} {net:>8} "
                  f"{mib(r.store_bytes):>9} {mib(r.client_rss_kib * 1024):>8} {srv_rss:>8}  "
                  f"{'yes' if r.ok else 'NO: ' + r.note}")
    print()
    if "boxbox" not in results:
        return
    bx = results["boxbox"]
    print("boxbox / peer, wall time (below 1 = boxbox faster):")
    for d in drivers:
        if d.name == "boxbox":
            continue
        cells = []
        for ph in PHASES:
            p = results[d.name].get(ph)
            cells.append(f"{ph} {bx[ph].wall / p.wall:.2f}" if p and p.wall > 0 else f"{ph} -")
        cpu = sum(bx[ph].client_cpu + bx[ph].server_cpu for ph in PHASES)
        pcpu = sum(results[d.name][ph].client_cpu + results[d.name][ph].server_cpu for ph in PHASES)
        print(f"  vs {d.name:<11} " + ", ".join(cells) + (f"; CPU (all phases) {cpu / pcpu:.2f}" if pcpu else ""))


def print_profiles(profile: Path, bx: dict[str, Result]) -> None:
    """Top 10 by cumulative time of boxbox's slowest phase (client side), and of the server."""
    import io
    import pstats

    from benchmarks.peers.profile_run import merge

    slowest = max(PHASES, key=lambda ph: bx[ph].wall)
    for title, prefix in ((f"boxbox client, slowest phase ({slowest})", profile / f"{slowest}.prof"),
                          ("boxbox server, all phases, every thread", profile / "server.prof")):
        stats = merge(prefix)
        if stats is None:
            print(f"no profile for {title}")
            continue
        merged = prefix.with_name(prefix.name + "-merged")
        stats.dump_stats(str(merged))  # reloaded: one file name in the header, not one per thread
        buf = io.StringIO()
        pstats.Stats(str(merged), stream=buf).sort_stats("cumulative").print_stats(25)
        buf.write("\n")
        pstats.Stats(str(merged), stream=buf).sort_stats("tottime").print_stats(12)
        print(f"\n=== cProfile: {title} (merged from {prefix}.*: {merged})")
        print(buf.getvalue())


def result_line(results: dict[str, dict[str, Result]]) -> str:
    bx = results.get("boxbox")
    bb = results.get("bb-nodelay")
    parts = []
    if bx and bb:
        def ratio(a: float, b: float) -> str:
            return f"{a / b:.2f}" if b > 0 else "nan"
        parts += [f"initial_ratio={ratio(bx['first'].wall, bb['first'].wall)}",
                  f"nochange_ratio={ratio(bx['nochange'].wall, bb['nochange'].wall)}",
                  f"incremental_ratio={ratio(bx['incremental'].wall, bb['incremental'].wall)}",
                  f"restore_ratio={ratio(bx['restore'].wall, bb['restore'].wall)}",
                  f"store_ratio={ratio(bx['incremental'].store_bytes, bb['incremental'].store_bytes)}",
                  f"incr_bytes_ratio={ratio(bx['incremental'].net_bytes, bb['incremental'].net_bytes)}"]
    else:
        parts += [f"{k}=nan" for k in ("initial_ratio", "nochange_ratio", "incremental_ratio", "restore_ratio",
                                       "store_ratio", "incr_bytes_ratio")]
    if bx:
        rss = max(bx[ph].client_rss_kib for ph in ("first", "nochange", "incremental"))
        parts.append(f"client_rss_mib={rss / 1024:.1f}")
    else:
        parts.append("client_rss_mib=nan")
    rs = results.get("restic")
    if bx and rs:
        parts.append(f"restic_initial_ratio={bx['first'].wall / rs['first'].wall:.2f}")
        parts.append(f"restic_restore_ratio={bx['restore'].wall / rs['restore'].wall:.2f}")
    return "RESULT " + " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
