"""Shared parts of the bench/ scripts (SPEC section 5): environment and size parsing, server processes started
and stopped by pid, CPU time from /proc, `qemu-img bench` runs with a timeout, the warm-up + alternating-rounds
loop, medians and plain-text tables.

The scripts import it with `sys.path.insert(0, os.path.dirname(__file__))`. Everything here listens on or
connects to loopback addresses only.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
RUN_RE = re.compile(r"Run completed in ([0-9.]+) seconds")

WORKLOADS = [
    # name, request size, queue depth, write?
    ("4k-write", 4096, 32, True),
    ("4k-read", 4096, 32, False),
    ("1m-write", 1 << 20, 16, True),
    ("1m-read", 1 << 20, 16, False),
]


class SetupError(Exception):
    pass


class RunError(Exception):
    pass


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def env_float(name, default):
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return float(v)
    except ValueError:
        raise SetupError(f"{name}={v!r} is not a number")


def env_int(name, default):
    return int(env_float(name, default))


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 1G, 512M)")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    n = int(m.group(1)) * mult
    if n < (16 << 20) or n % (1 << 20):
        raise argparse.ArgumentTypeError("size must be a whole number of MiB, at least 16M")
    return n


def human(n):
    for unit, mult in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def io_counts():
    """I/Os per counted run by request size, from BENCH_SCALE, BENCH_COUNT_4K and BENCH_COUNT_1M."""
    scale = env_float("BENCH_SCALE", 1.0)
    return {4096: max(1, round(env_int("BENCH_COUNT_4K", 100000) * scale)),
            1 << 20: max(1, round(env_int("BENCH_COUNT_1M", 3000) * scale))}


def tail(path, lines=8):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def cpu_ticks(pid):
    """utime + stime of the whole process (all threads, live and exited), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def free_ports(n, host="127.0.0.1"):
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def port_free_on(port, hosts):
    """True when a TCP socket can be bound to port on every one of hosts right now."""
    for host in hosts:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def listen_addrs(pid):
    """Local addresses process pid listens on (TCP), from ss; None if ss is unavailable."""
    if not shutil.which("ss"):
        return None
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    addrs = []
    for line in out.splitlines():
        if f"pid={pid}," in line:
            parts = line.split()
            if len(parts) >= 4:
                addrs.append(parts[3])
    return addrs


def alive(proc):
    return proc is not None and proc.poll() is None


def fill_file(path, size, create=True):
    """Allocate and then really write bytes [0, size) of path (a non-zero byte), so the server pays for neither
    block allocation nor unwritten-extent conversion. create: a new file (refused if it exists); otherwise an
    existing file whose bytes past size (e.g. metadata at its end) are kept as they are and only allocated."""
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(size, os.fstat(fd).st_size))
        chunk = b"\x5a" * (4 << 20)
        off = 0
        while off < size:
            n = min(len(chunk), size - off)
            os.pwrite(fd, chunk[:n], off)
            off += n
        os.fsync(fd)
    finally:
        os.close(fd)


def check_twinsan_bin(path):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise SetupError(f"twinsan binary not found at {path}; build it first: "
                         f"(cd {REPO} && cargo build --release --bin twinsan), or pass --twinsan PATH")


def check_qemu_iscsi(iqn):
    """qemu-img without QEMU's iSCSI driver says "Unknown protocol 'iscsi'"; with it, a dead port gives a
    connect error."""
    port = free_ports(1)[0]
    r = subprocess.run(["qemu-img", "info", f"iscsi://127.0.0.1:{port}/{iqn}/1"], capture_output=True,
                       text=True, timeout=60)
    out = r.stdout + r.stderr
    if "Unknown protocol" in out or "Unknown driver" in out:
        raise SetupError("qemu-img has no iSCSI support (install qemu-block-extra at the qemu-utils version; "
                         f"scripts/install-test-deps does it): {out.strip()}")


class Process:
    """A server process a bench script starts: its own session (a Ctrl-C in the terminal reaches only the
    script, which then stops it), stdout and stderr appended to log_path, its pid recorded in pids."""

    name = "?"

    def __init__(self, pids):
        self.pids = pids
        self.proc = None
        self.logfile = None
        self.log_path = None

    def _spawn(self, argv):
        self.logfile = open(self.log_path, "ab")
        self.logfile.write(f"\n=== {' '.join(argv)}\n".encode())
        self.logfile.flush()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logfile, stderr=self.logfile,
                                     start_new_session=True)
        self.pids.add(self.proc.pid)

    def _wait_listening(self, host, port, timeout=15, also=()):
        """Until the process listens on host:port. It must listen on nothing but that (and the `also` addresses,
        e.g. its metrics endpoint)."""
        want = f"{host}:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(self.proc):
                raise RunError(f"{self.name} exited (status {self.proc.returncode}) while starting:\n"
                               f"{tail(self.log_path)}")
            addrs = listen_addrs(self.proc.pid)
            if addrs is None:  # no ss: fall back to a connect probe
                try:
                    socket.create_connection((host, port), timeout=1).close()
                    return
                except OSError:
                    pass
            elif addrs:
                stray = [a for a in addrs if a != want and a not in also]
                if stray:
                    raise RunError(f"{self.name} listens on {', '.join(stray)}, not only {want}")
                if want in addrs:
                    return
            time.sleep(0.1)
        raise RunError(f"{self.name} did not listen on {want} within {timeout}s:\n{tail(self.log_path)}")

    def _reap(self, grace):
        """Wait up to grace seconds for the process to exit, then SIGTERM it, then SIGKILL it."""
        if self.proc is None:
            return
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.proc.pid}) ignored SIGTERM; sending SIGKILL")
                self.proc.kill()
                self.proc.wait()
        self.pids.discard(self.proc.pid)
        self.proc = None
        if self.logfile:
            self.logfile.close()
            self.logfile = None

    def terminate(self, grace=10):
        """SIGTERM, then wait for the exit (SIGKILL after grace + 5 s)."""
        if alive(self.proc):
            self.proc.send_signal(signal.SIGTERM)
        self._reap(grace)

    # What QemuBench needs of a target (it also needs .name and .url).

    def alive(self):
        return alive(self.proc)

    def death(self):
        return f"{self.name} died (status {self.proc.returncode})"

    def logs(self):
        return f"{self.name} log:\n{tail(self.log_path)}"

    def cpu(self):
        return cpu_ticks(self.proc.pid)

    def cpu_parts(self):
        """CPU ticks of each process that serves the target; QemuBench sums them."""
        return [self.cpu()]


def run_result(count, size, secs, wall, ticks):
    """The result keys every runner gives: rates from count I/Os of size bytes in secs, and the target's CPU per
    I/O from its ticks (one entry per process)."""
    return {
        "secs": secs,
        "wall": wall,
        "iops": count / secs,
        "mibs": count * size / secs / (1 << 20),
        "cpu_us": sum(ticks) / CLK_TCK / count * 1e6,
        "cpu_s": sum(ticks) / CLK_TCK,
        "cpu_parts_us": [t / CLK_TCK / count * 1e6 for t in ticks],
    }


class QemuBench:
    """`qemu-img bench -f raw -t none` against a target's URL, one run at a time, with a timeout."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.proc = None

    def run(self, target, size, depth, write, count, pattern=165):
        argv = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(count), "-d", str(depth),
                "-s", str(size)]
        if write:
            argv += ["-w", "--pattern", str(pattern)]
        argv.append(target.url)
        out, rc, wall, ticks = self._watched(argv, target, "qemu-img", "qemu-img bench")
        m = RUN_RE.search(out)
        if rc != 0 or not m:
            raise RunError(f"qemu-img bench against {target.name} failed (status {rc}): {out.strip()}\n"
                           f"{target.logs()}")
        secs = float(m.group(1))
        return run_result(count, size, max(secs, 1e-6), wall, ticks)

    def _watched(self, argv, target, tool, during):
        """Runs argv to the end while watching target (libiscsi keeps reconnecting to a dead target, so the target
        is watched rather than the tool waited for); (output, status, wall seconds, the target's CPU ticks per
        process). RunError if the target died or the tool outlived the timeout."""
        cpu0 = target.cpu_parts()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = t0 + self.timeout
        while True:
            try:
                out, _ = self.proc.communicate(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                pass
            dead = not target.alive()
            if dead or time.monotonic() > deadline:
                self.proc.kill()
                out, _ = self.proc.communicate()
                self.proc = None
                what = f"{target.death()} during" if dead else f"{tool} hung for {self.timeout:.0f}s in"
                raise RunError(f"{what} {' '.join(argv)}\n{tool}: {out.strip() or '(no output)'}\n"
                               f"{target.logs()}")
        # (On Ctrl-C self.proc stays set, so kill() from the cleanup stops it.)
        rc = self.proc.returncode
        self.proc = None
        wall = time.monotonic() - t0
        if not target.alive():
            raise RunError(f"{target.death()} during {during}:\n{out.strip()}\n{target.logs()}")
        cpu1 = target.cpu_parts()
        return out, rc, wall, [b - a for a, b in zip(cpu0, cpu1)]

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# The latency workload: 4 KiB writes at queue depth 1, each timed (qemu-img bench gives only the total).
LATENCY_WORKLOAD = ("4k-write-qd1", 4096, 1, True)
LATENCY_TOOL = os.path.join(REPO, "crates/twinsan/tests/tools/iscsi-latency.c")
LAT_RE = re.compile(r"^writes (\d+) median_us ([0-9.]+) p99_us ([0-9.]+) mean_us ([0-9.]+) min_us ([0-9.]+) "
                    r"max_us ([0-9.]+)$", re.M)


def build_latency_tool(workdir):
    """Builds iscsi-latency (a libiscsi C tool of the tests, cc -liscsi) into workdir; returns its path."""
    if not shutil.which("cc"):
        raise SetupError("cc not found (Debian package gcc); run scripts/install-test-deps")
    if not os.path.isfile("/usr/include/iscsi/iscsi.h"):
        raise SetupError("libiscsi's headers are not installed (Debian package libiscsi-dev); "
                         "run scripts/install-test-deps")
    out = os.path.join(workdir, "iscsi-latency")
    r = subprocess.run(["cc", "-Wall", "-O2", "-o", out, LATENCY_TOOL, "-liscsi"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SetupError(f"building {LATENCY_TOOL} failed: {(r.stderr or r.stdout).strip()}")
    return out


class LatencyBench(QemuBench):
    """iscsi-latency against a target's URL: `count` 4 KiB writes at queue depth 1, each timed from send to
    status. A runner for run_workload like QemuBench (same result keys, from the mean latency), plus the median,
    p99, mean, min and max latency in µs."""

    def __init__(self, timeout, tool):
        super().__init__(timeout)
        self.tool = tool

    def run(self, target, size, depth, write, count, pattern=165):
        if (size, depth, write) != LATENCY_WORKLOAD[1:]:
            raise SetupError(f"iscsi-latency does 4 KiB writes at depth 1 only, not {size} at {depth}")
        argv = [self.tool, target.url, str(count), str(pattern)]
        out, rc, wall, ticks = self._watched(argv, target, "iscsi-latency", "iscsi-latency")
        m = LAT_RE.search(out)
        if rc != 0 or not m or int(m.group(1)) != count:
            raise RunError(f"iscsi-latency against {target.name} failed (status {rc}): {out.strip()}\n"
                           f"{target.logs()}")
        median_us, p99_us, mean_us, min_us, max_us = (float(m.group(i)) for i in range(2, 7))
        secs = max(mean_us * count / 1e6, 1e-6)
        return run_result(count, size, secs, wall, ticks) | {
            "median_us": median_us,
            "p99_us": p99_us,
            "mean_us": mean_us,
            "min_us": min_us,
            "max_us": max_us,
        }


def run_workload(runner, targets, order, wl, count, warmup_count, rounds, restart, check=None, name_width=7):
    """One warm-up run per target, then rounds rounds alternating the targets in order. A target that fails is
    restarted (restart(name)) and skipped for the rest of the workload. check(name), if given, runs after each
    run and raises RunError when the target is no longer fit to be measured. Returns ({name: [result, ...]},
    {name: error text})."""
    name, size, depth, write = wl
    res = {t: [] for t in order}
    errors = {}
    plan = [(t, warmup_count, "warm-up") for t in order]
    plan += [(t, count, f"round {r + 1}/{rounds}") for r in range(rounds) for t in order]
    for tname, n, label in plan:
        if tname in errors:
            continue
        target = targets[tname]
        if not target.alive():
            errors[tname] = f"{tname} is not running"
            continue
        try:
            r = runner.run(target, size, depth, write, n)
            if check is not None:
                check(tname)
        except RunError as e:
            errors[tname] = str(e)
            log(f"{name} {label} {tname}: FAILED\n{e}")
            try:
                restart(tname)  # a clean target for the next workload
            except RunError as e2:
                log(f"restarting {tname} failed: {e2}")
            continue
        lat = f"  latency median {r['median_us']:.1f} us p99 {r['p99_us']:.1f} us" if "median_us" in r else ""
        log(f"{name:8} {label:11} {tname:{name_width}}: {r['iops']:9.0f} IOPS {r['mibs']:8.1f} MiB/s  "
            f"{r['secs']:6.2f}s  target CPU {r['cpu_s']:5.2f}s = {r['cpu_us']:6.1f} us/IO{lat}")
        if label != "warm-up":
            res[tname].append(r)
    return res, errors


def medians(results, keys=("iops", "mibs", "cpu_us")):
    """Median of each key over a list of run results; None for no results."""
    if not results:
        return None
    return {k: statistics.median(r[k] for r in results) for k in keys}


def format_table(hdr, rows, left=(0,)):
    """Lines of a plain-text table: the columns numbered in left left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(hdr)]

    def fmt_row(r):
        return " | ".join(c.ljust(widths[i]) if i in left else c.rjust(widths[i])
                          for i, c in enumerate(r)).rstrip()

    return [fmt_row(hdr), "-+-".join("-" * w for w in widths)] + [fmt_row(r) for r in rows]


def indent_note(text):
    """A multi-line note: its first line as is, the others indented."""
    return "\n".join("    " + l if i else l for i, l in enumerate(text.splitlines()))


def clean_workdir(workdir, keep_logs):
    """Remove the temporary directory, or with keep_logs everything in it but the *.log files."""
    if not (workdir and os.path.isdir(workdir)):
        return
    if keep_logs:
        for root, dirs, files in os.walk(workdir, topdown=False):
            for f in files:
                if not f.endswith(".log"):
                    os.unlink(os.path.join(root, f))
            for d in dirs:
                try:
                    os.rmdir(os.path.join(root, d))
                except OSError:
                    pass  # holds logs
        log(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def run_main(prog, bench):
    """Runs bench.run() with Ctrl-C, SIGTERM and SIGHUP turned into a clean stop, and bench.cleanup() always.
    Exit status: what run() returns, 2 on a SetupError, 130 when interrupted."""

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        return bench.run()
    except SetupError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        # Ignore further Ctrl-C while the servers are being stopped.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        bench.cleanup()


# ---- for bench/failover: line-stamped child output, qemu-io timing lines, who listens where ---------------

QEMU_IO_TIMING_RE = re.compile(r"ops; ([0-9:.]+)[ (]")


def qemu_io_secs(line):
    """The duration of a qemu-io timing line, in seconds ("64 KiB, 1 ops; 00.01 sec (...)" below a second,
    "64 KiB, 1 ops; 0:00:02.84 (...)" from one); None for any other line."""
    m = QEMU_IO_TIMING_RE.search(line)
    if not m:
        return None
    secs = 0.0
    try:
        for part in m.group(1).split(":"):
            secs = secs * 60 + float(part)
    except ValueError:
        return None
    return secs


class LineStream:
    """A child process whose stdout and stderr lines are recorded, each with the time.monotonic() of its
    arrival, by two reader threads. With `stdbuf -oL` in front of qemu-io, each command's result line arrives as
    the command completes. The child runs in its own session (a Ctrl-C in the terminal reaches only the script);
    its pid is in pids until reap()."""

    def __init__(self, argv, pids, env=None):
        self.pids = pids
        self.argv = argv
        self.lock = threading.Lock()
        self.out = []
        self.err = []
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, start_new_session=True)
        pids.add(self.proc.pid)
        self.threads = [threading.Thread(target=self._read, args=(f, sink), daemon=True)
                        for f, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    def _read(self, f, sink):
        for raw in iter(f.readline, b""):
            t = time.monotonic()
            with self.lock:
                sink.append((t, raw.decode("utf-8", "replace").rstrip("\n")))

    def lines(self):
        """[(arrival, line)] of stdout so far."""
        with self.lock:
            return list(self.out)

    def err_lines(self):
        with self.lock:
            return list(self.err)

    def count(self, prefix):
        """Lines of stdout so far that start with prefix."""
        with self.lock:
            return sum(1 for _, l in self.out if l.startswith(prefix))

    def wait_count(self, prefix, n, timeout):
        """Until n lines of stdout start with prefix (True), the child exits or timeout seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(prefix) >= n:
                return True
            if self.proc.poll() is not None:
                return self.count(prefix) >= n
            time.sleep(0.005)
        return False

    def wait(self, timeout):
        """Its exit status, or None if it still runs after timeout seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.reap()

    def reap(self):
        """Wait for the (exited or killed) child and for its output to be read; forget its pid."""
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self.threads:
            t.join(5)
        self.pids.discard(self.proc.pid)


def socket_owners(hosts):
    """Sockets bound on any of the IPv4 hosts (TCP listening and UDP), from `ss -Hltnup`: a list of
    (protocol, local address, [pids]); [] for sockets ss shows without a process. None without ss."""
    if not shutil.which("ss"):
        return None
    out = subprocess.run(["ss", "-Hltnup"], capture_output=True, text=True, timeout=30).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        local = parts[4]
        if local.rpartition(":")[0] in hosts:
            found.append((parts[0], local, [int(p) for p in re.findall(r"pid=(\d+)", line)]))
    return found


def tcp_listening(host, port):
    """True when some socket listens on the IPv4 host:port, from /proc/net/tcp (cheap enough to poll often)."""
    want = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False
