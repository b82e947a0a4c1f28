#!/usr/bin/env python3
"""Measures the relay's memory and CPU: idle, at a steady webhook rate, and in a burst.

Starts `dingtalk-relay serve --sandbox` (the built-in DingTalk stand-in, nothing leaves the
machine) on 127.0.0.1 with a throw-away SQLite store, sends generic job_status webhooks to it
(loopback only, bounded in count and time), samples VmRSS/VmHWM from /proc/<pid>/status and
utime+stime from /proc/<pid>/stat, prints a table and stops the relay.

    python3 deploy/tools/measure.py --binary target/release/dingtalk-relay

Standard library only. The numbers in deploy/README.md come from this script.
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
import threading
import time
import urllib.error
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post(url: str, body: dict, timeout: float = 10.0) -> int:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def job(n: int) -> dict:
    return {
        "type": "job_status", "job": "build", "status": "success" if n % 10 else "failure",
        "project": "acme/api", "pipeline": "CI", "run_id": str(n), "branch": "main",
        "commit": "9f2c1e7", "commit_message": f"Change {n}", "actor": "octocat",
        "url": f"https://ci.example.com/runs/{n}", "duration_secs": 192,
        "summary": f"run {n}: 418 tests passed",
    }


class Sampler(threading.Thread):
    """Samples RSS and CPU once per `interval` until stopped."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, float]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            st = proc_status(self.pid)
            self.samples.append((time.monotonic(), st["VmRSS"], cpu_seconds(self.pid)))
            self.stop_event.wait(self.interval)


def phase(name, pid, hook, seconds, rate, workers, counter, results):
    """Sends webhooks for `seconds` at `rate` per second (0 = as fast as `workers` go)."""
    sampler = Sampler(pid)
    sampler.start()
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    deadline = start + seconds
    lock = threading.Lock()
    codes: dict[int, int] = {}

    def worker(index: int) -> None:
        sent = 0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if rate:
                due = start + (sent * workers + index) / rate
                if due > now:
                    time.sleep(min(due - now, deadline - now))
                    continue
            with lock:
                counter[0] += 1
                n = counter[0]
            code = post(hook, job(n))
            sent += 1
            with lock:
                codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(pid) - start_cpu
    sampler.stop_event.set()
    sampler.join()
    rss = [s[1] for s in sampler.samples]
    # Busiest one-second window of CPU.
    peak = 0.0
    s = sampler.samples
    for i in range(len(s)):
        for j in range(i + 1, len(s)):
            if s[j][0] - s[i][0] >= 1.0:
                peak = max(peak, (s[j][2] - s[i][2]) / (s[j][0] - s[i][0]))
                break
    total = sum(codes.values())
    results.append({
        "phase": name, "seconds": round(elapsed, 1), "webhooks": total,
        "per_second": round(total / elapsed, 1), "codes": codes,
        "rss_mib_max": round(max(rss) / 1024, 1), "rss_mib_end": round(rss[-1] / 1024, 1),
        "cpu_cores_avg": round(cpu / elapsed, 3), "cpu_cores_peak_1s": round(peak, 3),
    })


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="target/release/dingtalk-relay")
    ap.add_argument("--config", default="config/default.yaml")
    ap.add_argument("--steady-rate", type=float, default=10.0, help="webhooks per second")
    ap.add_argument("--steady-seconds", type=float, default=30.0)
    ap.add_argument("--burst-seconds", type=float, default=20.0)
    ap.add_argument("--burst-workers", type=int, default=16)
    ap.add_argument("--drain-seconds", type=float, default=30.0)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="relay-measure-")
    port, admin = free_port(), free_port()
    env = dict(os.environ,
               DINGTALK_RELAY__SERVER__LISTEN=f"127.0.0.1:{port}",
               DINGTALK_RELAY__SERVER__ADMIN_LISTEN=f"127.0.0.1:{admin}",
               DINGTALK_RELAY__STORE__URL=f"sqlite://{tmp}/relay.db",
               DINGTALK_RELAY__LOG__FORMAT="json",
               RUST_LOG="warn")
    log = open(os.path.join(tmp, "relay.log"), "w")
    relay = subprocess.Popen([args.binary, "serve", "--sandbox", "--config", args.config],
                             env=env, stdout=log, stderr=subprocess.STDOUT)
    base, hook = f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{port}/v1/hooks/ci"
    results: list[dict] = []
    try:
        for _ in range(100):
            try:
                if get(base + "/readyz", 1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("relay did not become ready; see " + log.name)
        time.sleep(5)
        idle = proc_status(relay.pid)
        c0 = cpu_seconds(relay.pid)
        time.sleep(10)
        idle_cpu = (cpu_seconds(relay.pid) - c0) / 10
        results.append({"phase": "idle", "rss_mib_end": round(idle["VmRSS"] / 1024, 1),
                        "threads": idle["Threads"], "cpu_cores_avg": round(idle_cpu, 4)})
        counter = [0]
        phase("steady", relay.pid, hook, args.steady_seconds, args.steady_rate, 2, counter, results)
        phase("burst", relay.pid, hook, args.burst_seconds, 0, args.burst_workers, counter, results)
        # Let the queue drain at max_qps for a while (bounded), sampling as we go.
        sampler = Sampler(relay.pid)
        sampler.start()
        c0, t0 = cpu_seconds(relay.pid), time.monotonic()
        time.sleep(args.drain_seconds)
        sampler.stop_event.set()
        sampler.join()
        depth = [line for line in get(base + "/metrics")[1].splitlines()
                 if line.startswith(("dingtalk_relay_queue_depth ",
                                     "dingtalk_relay_queue_oldest_age_seconds "))]
        results.append({"phase": "drain", "seconds": args.drain_seconds,
                        "rss_mib_max": round(max(s[1] for s in sampler.samples) / 1024, 1),
                        "cpu_cores_avg": round((cpu_seconds(relay.pid) - c0) /
                                               (time.monotonic() - t0), 3),
                        "after": depth})
        final = proc_status(relay.pid)
        results.append({"phase": "end", "rss_mib_end": round(final["VmRSS"] / 1024, 1),
                        "rss_mib_high_water": round(final["VmHWM"] / 1024, 1),
                        "threads": final["Threads"],
                        "db_mib": round(sum(os.path.getsize(os.path.join(tmp, f))
                                            for f in os.listdir(tmp) if "relay.db" in f)
                                        / 2**20, 1)})
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(20)
        except subprocess.TimeoutExpired:
            relay.kill()
        log.close()
    for r in results:
        print(json.dumps(r, ensure_ascii=False))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
