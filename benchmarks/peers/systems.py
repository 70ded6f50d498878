"""One driver per system for vs_boxbackup.py: boxbox, Box Backup (stock and TCP_NODELAY), restic, borg.

Each driver: `setup()` (not timed), `backup(label)` and `restore(out)` returning a measure.Result,
`restored_root(out)` (where the source tree lands inside `out`), `store_dirs()`, `close()`.
Daemons are started once in setup and stopped by PID in close().
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from benchmarks.peers.measure import HwmSampler, Result, children_of, lo_counters, proc_cpu, run_measured, \
    stop_pid
from benchmarks.peers.workload import store_size

ROOT = Path(__file__).resolve().parent.parent.parent

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void mark(void) {
    static int done;
    const char *f = getenv("NODELAY_SHIM_MARK");
    if (done || !f) return;
    done = 1;
    FILE *o = fopen(f, "a");
    if (o) { fprintf(o, "%d\n", (int)getpid()); fclose(o); }
}

static void nodelay(int fd) {
    int type = 0, one = 1;
    socklen_t len = sizeof type;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) return;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) return;
    if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) return;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0) mark();
}

int socket(int domain, int type, int protocol) {
    static int (*real)(int, int, int);
    if (!real) real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    int fd = real(domain, type, protocol);
    if (fd >= 0 && (domain == AF_INET || domain == AF_INET6)) nodelay(fd);
    return fd;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    int r = real(fd, addr, len);
    nodelay(fd);
    return r;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    int r = real(fd, addr, len);
    nodelay(r);
    return r;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int r = real(fd, addr, len, flags);
    nodelay(r);
    return r;
}
"""


RUNRSS_C = r"""
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* runrss OUT CMD...: run CMD, write "maxrss_kib user_s sys_s" of it (and its reaped children) to OUT.
   A small launcher, so that the peak RSS is the command's own and not that of the process that
   forked it (Linux carries the pre-exec memory's high-water mark into ru_maxrss). */
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    pid_t p = fork();
    if (p == 0) { execvp(argv[2], argv + 2); _exit(127); }
    int st = 0;
    struct rusage ru;
    if (p < 0 || wait4(p, &st, 0, &ru) < 0) return 2;
    FILE *f = fopen(argv[1], "w");
    if (f) {
        fprintf(f, "%ld %ld.%06ld %ld.%06ld\n", ru.ru_maxrss, (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec,
                (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec);
        fclose(f);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
"""


def build_runrss(d: Path) -> Path | None:
    """Build the small launcher that reports a command's own peak RSS; None without gcc."""
    if not shutil.which("gcc"):
        return None
    src = d / "runrss.c"
    src.write_text(RUNRSS_C)
    exe = d / "runrss"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def build_shim(d: Path) -> Path | None:
    """Build the TCP_NODELAY LD_PRELOAD shim with gcc into d; None without gcc."""
    if not shutil.which("gcc"):
        return None
    src = d / "nodelay.c"
    src.write_text(SHIM_C)
    so = d / "nodelay.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"], check=True)
    so.chmod(0o755)
    return so


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {port}")


class Driver:
    name = "?"
    has_server = False

    def __init__(self, base: Path, src: Path, sampler: HwmSampler) -> None:
        self.base = base
        self.src = src
        self.sampler = sampler
        self.server: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        base.mkdir(parents=True)
        os.chmod(base, 0o755)
        self.log = base / "bench.log"

    # ---------------------------------------------------------------- measurement frame
    def _settle_server(self) -> None:
        """Wait until the server has no per-connection children (their CPU is then in cutime)."""
        if self.server is None:
            return
        deadline = time.monotonic() + 10
        while children_of(self.server.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)

    def measured(self, cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Result:
        r = Result()
        s_cpu0 = proc_cpu(self.server.pid) if self.server else 0.0
        d_cpu0 = proc_cpu(self.daemon.pid) if self.daemon else 0.0
        if self.server:
            self.sampler.watch(self.name + "/server", self.server.pid)
        if self.daemon:
            self.sampler.watch(self.name + "/daemon", self.daemon.pid)
        b0, _ = lo_counters()
        code, wall, cpu, rss = run_measured(cmd, env=env, cwd=cwd, log=str(self.log))
        self._settle_server()
        b1, _ = lo_counters()
        r.wall = wall
        r.client_cpu = cpu + (proc_cpu(self.daemon.pid) - d_cpu0 if self.daemon else 0.0)
        r.server_cpu = proc_cpu(self.server.pid) - s_cpu0 if self.server else 0.0
        r.client_rss_kib = rss
        if self.daemon:
            r.client_rss_kib = max(rss, self.sampler.take(self.name + "/daemon"))
        if self.server:
            r.server_rss_kib = self.sampler.take(self.name + "/server")
        r.net_bytes = b1 - b0 if self.has_server else 0
        r.ok = code == 0
        if not r.ok:
            r.note = f"exit {code}, see {self.log}"
        r.store_bytes = store_size(*self.store_dirs())
        return r

    def restored_root(self, out: Path) -> Path:
        return out

    def store_dirs(self) -> list[Path]:
        return []

    def close(self) -> None:
        for p in (self.daemon, self.server):
            if p is not None:
                stop_pid(p)


# ==================================================================== boxbox
class Boxbox(Driver):
    name = "boxbox"
    has_server = True

    def __init__(self, base: Path, src: Path, sampler: HwmSampler, profile_dir: Path | None = None) -> None:
        super().__init__(base, src, sampler)
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.profile_dir = profile_dir
        self.runs = 0

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "boxbox", *args]

    def setup(self) -> None:
        sys.path.insert(0, str(ROOT))
        from boxbox.ca import authority
        from boxbox.crypto.keys import create_keys_file

        d = self.base
        authority.init_ca(d / "ca")
        authority.sign_server(d / "ca", "localhost", d / "server", alt_names=["127.0.0.1"])
        authority.sign_client(d / "ca", 1, d / "client")
        self.port = free_port()
        self.discs = [d / f"disc{i}" for i in range(3)]
        for disc in self.discs:
            disc.mkdir()
        conf = d / "server.conf"
        conf.write_text(textwrap.dedent(f"""\
            [server]
            listen = 127.0.0.1
            port = {self.port}
            certificate = {d / 'server' / 'server.crt'}
            private_key = {d / 'server' / 'server.key'}
            ca_certificate = {d / 'ca' / 'ca.crt'}
            account_database = {d / 'accounts.db'}
            log_level = warning

            [discset 0]
            directories = {', '.join(str(x) for x in self.discs)}
            """))
        subprocess.run(self.cmd("accounts", "--config", str(conf), "create", "1", "--soft", "100G", "--hard",
                                "120G"), check=True, env=self.env, stdout=subprocess.DEVNULL)
        args = self.cmd("server", "--config", str(conf), "--foreground")
        if self.profile_dir is not None:  # the whole server life, every session thread included
            args[1:3] = [str(Path(__file__).with_name("profile_run.py")), str(self.profile_dir / "server.prof")]
        if os.geteuid() == 0:
            args.append("--allow-root")
        slog = d / "server.log"
        self.server = subprocess.Popen(args, env=self.env, stdout=open(slog, "ab"), stderr=subprocess.STDOUT)
        wait_port(self.port, self.server, "boxbox server", slog)
        create_keys_file(d / "keys.dat")
        self.conf = d / "client.conf"
        c = d / "client"
        self.conf.write_text(textwrap.dedent(f"""\
            [client]
            server = localhost
            port = {self.port}
            account = 1
            certificate = {c / 'client.crt'}
            private_key = {c / 'client.key'}
            ca_certificate = {c / 'ca.crt'}
            keys_file = {d / 'keys.dat'}
            data_directory = {d / 'state'}
            automatic_backup = no
            log_level = info

            [location home]
            path = {self.src}
            """))

    def _wrap(self, args: list[str], label: str) -> list[str]:
        if self.profile_dir is None:
            return self.cmd(*args)
        return [sys.executable, str(Path(__file__).with_name("profile_run.py")),
                str(self.profile_dir / f"{label}.prof"), *args]

    def backup(self, label: str) -> Result:
        r = self.measured(self._wrap(["client", "--config", str(self.conf), "--once"], label), env=self.env)
        done = [line for line in self.log.read_text(errors="replace").splitlines()
                if "backup run done" in line or "nothing changed" in line]
        if done:  # the client's own summary: files uploaded / as diffs / moved / deleted, bytes sent
            line = done[-1]
            r.note = line[line.find("backup run done") if "backup run done" in line else line.find("nothing"):]
        return r

    def restore(self, out: Path) -> Result:
        return self.measured(self._wrap(["query", "--config", str(self.conf), "--quiet", "restore", "/home",
                                         str(out)], "restore"), env=self.env)

    def store_dirs(self) -> list[Path]:
        return self.discs


# ==================================================================== Box Backup
class BoxBackup(Driver):
    """bbstored + bbackupd (snapshot mode) configured with Box Backup's own scripts, store on 3 RAID dirs.

    bbstored drops to the `bbstored` system user the Debian package creates (its `User`
    setting), so its discs and run directory belong to that user. bbackupd runs as root (it
    must read every file). Each phase is `bbackupctl sync-and-wait`; restore is
    `bbackupquery "restore home OUT" quit`. With a shim, every Box Backup process runs
    with LD_PRELOAD=nodelay.so.
    """

    has_server = True

    def __init__(self, base: Path, src: Path, sampler: HwmSampler, shim: Path | None, name: str) -> None:
        super().__init__(base, src, sampler)
        self.shim = shim
        self.name = name
        self.env = dict(os.environ)
        if shim is not None:
            self.mark = base / "shim-pids.txt"
            self.mark.touch()
            self.mark.chmod(0o666)  # bbstored appends to it as its own user
            self.env.update(LD_PRELOAD=str(shim), NODELAY_SHIM_MARK=str(self.mark))

    def run(self, cmd: list[str], input_: str | None = None, cwd: Path | None = None) -> None:
        with open(self.log, "ab") as log:
            subprocess.run(cmd, check=True, input=(input_ or "").encode(), stdout=log, stderr=log,
                           env=dict(os.environ, LANG="C"), cwd=cwd)

    def setup(self) -> None:
        import pwd
        d = self.base
        user = "bbstored"
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            pw = pwd.getpwnam("nobody")
            user = "nobody"
        self.discs = [d / f"disc{i}" for i in range(3)]
        run = d / "run"
        for p in (*self.discs, run):
            p.mkdir()
            os.chown(p, pw.pw_uid, pw.pw_gid)
        etc = d / "etc"
        self.run(["raidfile-config", str(etc), "4096", *map(str, self.discs)])
        self.run(["bbstored-certs", str(d / "ca"), "init"])
        self.run(["bbstored-config", str(etc), "localhost", user])
        self.run(["bbstored-certs", str(d / "ca"), "sign-server", str(etc / "bbstored" / "localhost-csr.pem")],
                 "yes\n")
        shutil.copy(d / "ca" / "servers" / "localhost-cert.pem", etc / "bbstored" / "localhost-cert.pem")
        shutil.copy(d / "ca" / "roots" / "clientCA.pem", etc / "bbstored" / "clientCA.pem")
        self.port = free_port()
        sconf = etc / "bbstored.conf"
        text = sconf.read_text()
        text = re.sub(r"ListenAddresses = .*", f"ListenAddresses = inet:127.0.0.1:{self.port}", text)
        text = re.sub(r"PidFile = .*", f"PidFile = {run / 'bbstored.pid'}", text)
        text = re.sub(r"TimeBetweenHousekeeping = .*", "TimeBetweenHousekeeping = 86400", text)
        sconf.write_text(text)
        for p in etc.rglob("*"):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        os.chown(etc, pw.pw_uid, pw.pw_gid)
        self.run(["bbstoreaccounts", "-c", str(sconf), "create", "1", "0", "100G", "120G"])
        slog = d / "bbstored.log"
        self.server = subprocess.Popen(["bbstored", "-F", "-Q", "-c", str(sconf)], env=self.env,
                                       stdout=open(slog, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(self.port, self.server, "bbstored", slog)

        cetc = d / "cetc"
        self.run(["bbackupd-config", str(cetc), "snapshot", "1", "127.0.0.1", str(d / "cdata"), str(self.src)])
        # bbstored-certs matches the account in the request's file name from the first
        # "/<hex>-" of the path, so it is given a bare file name
        self.run(["bbstored-certs", str(d / "ca"), "sign", "1-csr.pem"], "yes\n", cwd=cetc / "bbackupd")
        shutil.copy(d / "ca" / "clients" / "1-cert.pem", cetc / "bbackupd" / "1-cert.pem")
        shutil.copy(d / "ca" / "roots" / "serverCA.pem", cetc / "bbackupd" / "serverCA.pem")
        self.conf = cetc / "bbackupd.conf"
        text = self.conf.read_text()
        text = text.replace("StoreHostname = 127.0.0.1", f"StoreHostname = 127.0.0.1\nStorePort = {self.port}")
        text = re.sub(r"BackupLocations\s*\{.*\}\s*$", "BackupLocations\n{\n\thome\n\t{\n\t\tPath = "
                      f"{self.src}\n\t}}\n}}\n", text, flags=re.S)
        self.conf.write_text(text)
        dlog = d / "bbackupd.log"
        self.daemon = subprocess.Popen(["bbackupd", "-F", "-Q", "-c", str(self.conf)], env=self.env,
                                       stdout=open(dlog, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        sock = d / "cdata" / "bbackupd.sock"
        deadline = time.monotonic() + 30
        while not sock.exists():
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bbackupd did not start: {dlog.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def backup(self, label: str) -> Result:
        return self.measured(["bbackupctl", "-q", "-c", str(self.conf), "sync-and-wait"], env=self.env)

    def restore(self, out: Path) -> Result:
        return self.measured(["bbackupquery", "-q", "-c", str(self.conf), f"restore home {out}", "quit"],
                             env=self.env)

    def store_dirs(self) -> list[Path]:
        return self.discs

    def shim_processes(self) -> int:
        """How many processes the shim set TCP_NODELAY in (0 without a shim)."""
        if self.shim is None or not self.mark.exists():
            return 0
        return len(self.mark.read_text().split())


# ==================================================================== restic and borg
class Restic(Driver):
    name = "restic"

    def setup(self) -> None:
        self.repo = self.base / "repo"
        self.env = dict(os.environ, RESTIC_PASSWORD="bench-password", RESTIC_REPOSITORY=str(self.repo),
                        RESTIC_CACHE_DIR=str(self.base / "cache"), HOME=str(self.base))
        with open(self.log, "ab") as log:
            subprocess.run(["restic", "init"], check=True, env=self.env, stdout=log, stderr=log)

    def backup(self, label: str) -> Result:
        return self.measured(["restic", "backup", "--quiet", "--host", "bench", str(self.src)], env=self.env)

    def restore(self, out: Path) -> Result:
        return self.measured(["restic", "restore", "latest", "--host", "bench", "--target", str(out)],
                             env=self.env)

    def restored_root(self, out: Path) -> Path:
        return out / str(self.src).lstrip("/")

    def store_dirs(self) -> list[Path]:
        return [self.repo]


class Borg(Driver):
    name = "borg"

    def setup(self) -> None:
        self.repo = self.base / "repo"
        self.env = dict(os.environ, BORG_PASSPHRASE="bench-password", BORG_BASE_DIR=str(self.base / "home"),
                        HOME=str(self.base), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes")
        self.n = 0
        with open(self.log, "ab") as log:
            subprocess.run(["borg", "init", "-e", "repokey", str(self.repo)], check=True, env=self.env,
                           stdout=log, stderr=log)

    def backup(self, label: str) -> Result:
        self.n += 1
        return self.measured(["borg", "create", f"{self.repo}::run{self.n}", "."], env=self.env,
                             cwd=str(self.src))

    def restore(self, out: Path) -> Result:
        out.mkdir()
        return self.measured(["borg", "extract", f"{self.repo}::run{self.n}"], env=self.env, cwd=str(out))

    def store_dirs(self) -> list[Path]:
        return [self.repo]
