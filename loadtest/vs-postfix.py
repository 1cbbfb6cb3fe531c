#!/usr/bin/env python3
"""volley send against Postfix's smtp-source, side by side on Postfix's smtp-sink.

One smtp-sink on loopback receives both. Each round runs, in alternating order:
  - smtp-source -d -s SESSIONS -m N -l SIZE   (Postfix's own load generator), and
  - volley send --recipients (N addresses) through [relay] to the same sink with
    SESSIONS connections: the whole path, CSV parsing, a synced queue, rendering,
    MIME, pipelined SMTP and the outcomes' commits.
Prints messages per second, CPU-seconds per 10k and peak RSS of each, and the ratio
volley / smtp-source over the sums of all rounds. Everything stays on 127.0.0.1 and
every run is bounded by --timeout.

Needs: smtp-source and smtp-sink (Debian's postfix package) and a release build
(cargo build --release -p volley).

  loadtest/vs-postfix.py --messages 50000 --rounds 2
  loadtest/vs-postfix.py --messages 10000 --size 102400 --rounds 2
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name):
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not found:
        sys.exit(f"{name} is missing (apt-get install postfix)")
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_measured(cmd, timeout, **kw):
    """Runs cmd; returns (wall seconds, CPU seconds, peak RSS MB, stdout)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            sys.exit(f"timed out: {' '.join(cmd)}")
        time.sleep(0.01)
    wall = time.monotonic() - start
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{cmd[0]} exited {code}: {err.strip()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out


def write_template(dir, size):
    """A static text template of about `size` bytes (the subject and one variable)."""
    t = os.path.join(dir, "templates", "load")
    os.makedirs(t)
    with open(os.path.join(t, "subject.hbs"), "w") as f:
        f.write("Load test for {{name}}\n")
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\n"
    body = "Hello {{name}},\n\n" + line * max(1, size // len(line))
    with open(os.path.join(t, "text.hbs"), "w") as f:
        f.write(body)


def write_recipients(path, n):
    with open(path, "w") as f:
        f.write("email,name\n")
        for i in range(n):
            f.write(f"user{i}@sink.test,User {i}\n")


def volley_config(dir, port, sessions):
    path = os.path.join(dir, "volley.toml")
    with open(path, "w") as f:
        f.write(
            f"""[queue]
path = "{dir}/data"

[templates]
path = "{dir}/templates"

[relay]
host = "127.0.0.1:{port}"
tls = "none"

[smtp]
helo_name = "volley.test"
max_connections_per_site = {sessions}
"""
        )
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--volley", default=os.path.join(ROOT, "target/release/volley"))
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    source, sink = tool("smtp-source"), tool("smtp-sink")
    if not os.access(a.volley, os.X_OK):
        sys.exit(f"{a.volley} is missing: cargo build --release -p volley")

    port = free_port()
    # As root, smtp-sink insists on dropping its privileges to some user.
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink_proc = subprocess.Popen(
        [sink, *user, f"127.0.0.1:{port}", "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            sys.exit("smtp-sink did not start")
        rows = {"smtp-source": [], "volley": []}

        def run_source():
            # -d: many messages per connection, as volley does (without it every
            # message opens a connection of its own, which is far slower).
            cmd = [source, "-d", "-s", str(a.sessions), "-m", str(a.messages), "-l", str(a.size),
                   "-f", "sender@volley.test", "-t", "user@sink.test", f"127.0.0.1:{port}"]
            wall, cpu, rss, _ = run_measured(cmd, a.timeout)
            rows["smtp-source"].append((wall, cpu, rss))

        def run_volley():
            with tempfile.TemporaryDirectory(prefix="vs-postfix-") as d:
                write_template(d, a.size)
                csv = os.path.join(d, "list.csv")
                write_recipients(csv, a.messages)
                cfg = volley_config(d, port, a.sessions)
                cmd = [a.volley, "send", "--config", cfg, "--template", "load",
                       "--recipients", csv, "--from", "sender@volley.test", "--json",
                       "--max-wait", "30s"]
                env = dict(os.environ, VOLLEY_LOG="warn")
                wall, cpu, rss, out = run_measured(cmd, a.timeout, env=env)
                summary = json.loads(out.strip().splitlines()[-1])
                if summary["delivered"] != a.messages:
                    sys.exit(f"volley delivered {summary['delivered']} of {a.messages}: {summary}")
                rows["volley"].append((wall, cpu, rss))

        # A small warm-up of each (binaries paged in), then alternating order.
        for r in range(a.rounds):
            order = [run_source, run_volley] if r % 2 == 0 else [run_volley, run_source]
            for f in order:
                f()
        out = {"messages": a.messages, "size": a.size, "sessions": a.sessions, "runs": {}}
        for name, runs in rows.items():
            out["runs"][name] = [
                {"msg_per_s": round(a.messages / w), "cpu_s_per_10k": round(c / a.messages * 1e4, 3),
                 "peak_rss_mb": round(m, 1)} for w, c, m in runs]
            print(f"{name:12} " + "  ".join(
                f"{a.messages / w:8.0f} msg/s {c / a.messages * 1e4:6.3f} CPU-s/10k {m:6.1f} MB"
                for w, c, m in runs))
        src = sum(w for w, _, _ in rows["smtp-source"])
        vol = sum(w for w, _, _ in rows["volley"])
        out["ratio"] = round(src / vol, 3)
        print(f"volley / smtp-source (messages per second, over all rounds): {src / vol:.3f}")
        print(json.dumps(out))
    finally:
        os.killpg(sink_proc.pid, signal.SIGTERM)
        sink_proc.wait()


if __name__ == "__main__":
    main()
