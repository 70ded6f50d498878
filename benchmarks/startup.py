#!/usr/bin/env python3
"""Start-up cost of the one-file executable: cold (first run unpacks into SHIV_ROOT) and warm.

    python3 benchmarks/startup.py                 # 15 runs of each
    python3 benchmarks/startup.py --quick         # 5 runs of each, under a minute
    python3 benchmarks/startup.py --exe PATH      # measure this executable
    python3 benchmarks/startup.py --build         # build a fresh one from a snapshot of the checkout

Without --exe or --build it measures dist/boxbox, building it (from a snapshot, in a temp
directory) when it is missing. Every figure is the median wall time of whole processes,
start to exit. Runs use the python3 a service would find (/usr/local/bin, /usr/bin, /bin:
what `#!/usr/bin/env python3` resolves to under systemd), or --python.

  cold  : a new empty SHIV_ROOT each run, so shiv unpacks the bundled packages first
  warm  : SHIV_ROOT already unpacked (every later start)
  floor : the bare interpreter, with and without `site`, for comparison

It also checks that `boxbox --help` (and `boxbox ctl status`, once that role exists) imports
neither `cryptography` nor the store, and splits a warm `--version` by `-X importtime` into
the interpreter's `site`, shiv's bootstrap and boxbox itself. The last line is:
RESULT warm_version_ms=X warm_help_ms=X cold_version_ms=X
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_MS = 150.0
SERVICE_PATH = "/usr/local/bin:/usr/bin:/bin"
# what `--help` and `ctl status` must not load (issue 10), and what is worth knowing about
FORBIDDEN = ("cryptography", "_cffi_backend", "boxbox.store")
NOTABLE = ("boxbox.crypto", "boxbox.raidfile", "boxbox.objects", "ssl")


def build_snapshot(work: Path) -> Path:
    """build/shiv.sh run in a copy of the checkout, so dist/ and half-edited files stay out of it."""
    src = work / "src"
    shutil.copytree(ROOT / "boxbox", src / "boxbox", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(ROOT / "build", src / "build", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if "SOURCE_DATE_EPOCH" not in env:
        proc = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True, text=True)
        env["SOURCE_DATE_EPOCH"] = proc.stdout.strip() or "315532800"
    proc = subprocess.run(["sh", str(src / "build" / "shiv.sh")], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        sys.exit(f"boxbox: benchmarks/startup.py: build/shiv.sh failed:\n{proc.stderr.strip()}")
    return src / "dist" / "boxbox"


def clean_env(shiv_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SHIV_")) and k != "BOXBOX_EXE"}
    env["SHIV_ROOT"] = str(shiv_root)
    return env


def run_ms(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall ms, CPU ms) of one process; CPU time hardly moves when other jobs share the cores."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = (time.perf_counter() - t0) * 1000
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"boxbox: benchmarks/startup.py: {' '.join(cmd)} exited {proc.returncode}: "
                 f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
    return wall, (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * 1000


Stats = tuple[float, float, float, float]  # wall median, wall min, wall max, CPU median


def summarize(samples: list[tuple[float, float]]) -> Stats:
    walls = [w for w, _ in samples]
    return statistics.median(walls), min(walls), max(walls), statistics.median(c for _, c in samples)


def median_ms(cmd: list[str], env: dict[str, str], cwd: Path, runs: int) -> Stats:
    return summarize([run_ms(cmd, env, cwd) for _ in range(runs)])


def imports_of(cmd: list[str], env: dict[str, str], cwd: Path) -> list[tuple[int, int, int, str]]:
    """`-X importtime` lines: (depth, self µs, cumulative µs, module)."""
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, cwd=cwd, capture_output=True, text=True)
    out = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            out.append((len(m.group(3)) // 2, int(m.group(1)), int(m.group(2)), m.group(4)))
    return out


def breakdown(imports: list[tuple[int, int, int, str]]) -> dict[str, float]:
    """Import ms by phase: interpreter start (site), shiv's bootstrap module, then its entry point.

    Everything imported at top level after `_bootstrap` has loaded is on behalf of the entry
    point, `boxbox.__main__` (argparse, logging, boxbox.logs, ...).
    """
    groups = {"site (interpreter, .pth files)": 0, "shiv bootstrap module": 0,
              "boxbox entry point (and what it imports)": 0, "other (runpy, encodings, ...)": 0}
    after_bootstrap = False
    for depth, _, cumulative, name in imports:  # -X importtime order: each module when it finishes
        if depth != 0:
            continue
        if name == "site":
            groups["site (interpreter, .pth files)"] += cumulative
        elif name.startswith("_bootstrap"):
            groups["shiv bootstrap module"] += cumulative
            after_bootstrap = True
        elif after_bootstrap or name.startswith("boxbox"):
            groups["boxbox entry point (and what it imports)"] += cumulative
        else:
            groups["other (runpy, encodings, ...)"] += cumulative
    return {k: v / 1000 for k, v in groups.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 runs of each (under a minute)")
    ap.add_argument("--runs", type=int, default=None, help="runs of each measurement (default 15, --quick 5)")
    ap.add_argument("--exe", type=Path, default=None, help="the executable to measure (default dist/boxbox)")
    ap.add_argument("--build", action="store_true", help="build a fresh executable from a snapshot of the checkout")
    ap.add_argument("--python", default=None,
                    help=f"interpreter to run it with (default: python3 on {SERVICE_PATH})")
    args = ap.parse_args()
    runs = args.runs or (5 if args.quick else 15)
    if runs < 1:
        ap.error("--runs must be at least 1")
    python = args.python or shutil.which("python3", path=SERVICE_PATH) or sys.executable

    with tempfile.TemporaryDirectory(prefix="boxbox-startup-") as tmp:
        work = Path(tmp)
        cwd = work / "cwd"
        cwd.mkdir()
        if args.build:
            exe = build_snapshot(work)
            origin = "built now from a snapshot of the checkout"
        elif args.exe is not None:
            exe = args.exe.resolve()
            origin = "given"
            if not exe.is_file():
                sys.exit(f"boxbox: benchmarks/startup.py: {exe}: no such file")
        elif (ROOT / "dist" / "boxbox").is_file():
            exe = ROOT / "dist" / "boxbox"
            origin = "dist/boxbox as found"
        else:
            exe = build_snapshot(work)
            origin = "dist/boxbox was missing: built now from a snapshot of the checkout"
        version = subprocess.run([python, "--version"], capture_output=True, text=True).stdout.strip()
        print(f"executable: {exe} ({exe.stat().st_size} bytes, {origin})")
        print(f"interpreter: {python} ({version}); {runs} runs of each; medians")

        rows: list[tuple[str, Stats]] = []
        # cold: each run unpacks into a new SHIV_ROOT
        cold = summarize([run_ms([python, str(exe), "--version"], clean_env(work / f"cold-{i}"), cwd)
                          for i in range(runs)])
        rows.append(("cold  boxbox --version (unpacks into SHIV_ROOT)", cold))

        warm_env = clean_env(work / "warm")
        run_ms([python, str(exe), "--version"], warm_env, cwd)  # unpack once
        run_ms([python, str(exe), "--help"], warm_env, cwd)
        warm_version = median_ms([python, str(exe), "--version"], warm_env, cwd, runs)
        warm_help = median_ms([python, str(exe), "--help"], warm_env, cwd, runs)
        rows.append(("warm  boxbox --version", warm_version))
        rows.append(("warm  boxbox --help", warm_help))
        path_python = shutil.which("python3")
        if path_python and os.path.realpath(path_python) != os.path.realpath(python):
            # what typing `dist/boxbox` does in this shell: the shebang finds this PATH's python3
            rows.append((f"warm  ./boxbox --version via this PATH's python3 ({path_python})",
                         median_ms([str(exe), "--version"], warm_env, cwd, runs)))
        src_env = clean_env(work / "unused")
        src_env["PYTHONPATH"] = str(ROOT)
        rows.append(("source  python3 -m boxbox --version (no zipapp)",
                     median_ms([python, "-m", "boxbox", "--version"], src_env, cwd, runs)))
        rows.append(("floor  python3 -c pass", median_ms([python, "-c", "pass"], warm_env, cwd, runs)))
        rows.append(("floor  python3 -S -c pass (no site)",
                     median_ms([python, "-S", "-c", "pass"], warm_env, cwd, runs)))

        width = max(len(r[0]) for r in rows)
        print()
        print(f"{'what':<{width}}  {'wall ms':>8}  {'min':>7}  {'max':>7}  {'CPU ms':>7}")
        for name, (med, lo, hi, cpu) in rows:
            print(f"{name:<{width}}  {med:8.1f}  {lo:7.1f}  {hi:7.1f}  {cpu:7.1f}")
        print("(wall: medians of whole processes; CPU: user + system time of the process, a median)")

        # what a warm --version spends its imports on
        # one -X importtime run is at the mercy of the scheduler: the least of several, per group
        samples = [imports_of([python, str(exe), "--version"], warm_env, cwd) for _ in range(max(3, runs // 2))]
        parts = [breakdown(sample) for sample in samples]
        imports = min(samples, key=lambda sample: sum(cum for depth, _, cum, _ in sample if depth == 0))
        print()
        print(f"warm --version, -X importtime, least of {len(samples)} runs: ms of imports by who asked for "
              "them (the wall time also has interpreter start and shiv's own work):")
        for group in parts[0]:
            print(f"  {group:<42} {min(p[group] for p in parts):7.1f}")
        top = sorted(imports, key=lambda i: -i[1])[:6]
        print("  biggest by own time: " + ", ".join(f"{name} {own / 1000:.1f}" for _, own, _, name in top))

        # --help (and ctl status) must not load the heavy parts
        failures = []
        checks = [("--help",)]
        ctl = subprocess.run([python, str(exe), "ctl", "--help"], env=warm_env, cwd=cwd, capture_output=True)
        if ctl.returncode == 0:
            checks.append(("ctl", "status"))
        print()
        for argv in checks:
            names = {name for *_, name in imports_of([python, str(exe), *argv], warm_env, cwd)}
            forbidden = sorted(n for n in names if n == "cryptography" or n.startswith(FORBIDDEN))
            notable = sorted(n for n in names if n.startswith(NOTABLE))
            print(f"boxbox {' '.join(argv)}: {len(names)} modules imported; cryptography or the store: "
                  f"{', '.join(forbidden) or 'none'}; also of note: {', '.join(notable) or 'none'}")
            if forbidden:
                failures.append(f"`boxbox {' '.join(argv)}` imports {', '.join(forbidden)}")
        if len(checks) == 1:
            print("boxbox ctl status: not checked (this build has no `ctl` role yet)")

        verdict = "meets" if warm_version[0] < GOAL_MS else "misses"
        print(f"goal: warm --version under {GOAL_MS:.0f} ms: {verdict} it ({warm_version[0]:.0f} ms wall, "
              f"{warm_version[3]:.0f} ms CPU; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        for f in failures:
            print(f"FAIL: {f}")
        print(f"RESULT warm_version_ms={warm_version[0]:.0f} warm_help_ms={warm_help[0]:.0f} "
              f"cold_version_ms={cold[0]:.0f}")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
