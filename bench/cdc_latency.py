"""Commit-to-visible latency of `connector-run --cdc` into the BigQuery emulator.

Commits a probe row every --every seconds (its commit time from the server's clock, which is
this machine's) for --seconds, while polling the target table; prints p50 / p95 / max of the
time from commit to the first poll that sees the row. Used by bench/cdc.sh.
"""

import argparse
import datetime
import json
import subprocess
import threading
import time
import urllib.request


def query(endpoint, project, sql):
    body = json.dumps({"query": sql, "useLegacySql": False, "timeoutMs": 30000}).encode()
    req = urllib.request.Request(
        f"{endpoint}/bigquery/v2/projects/{project}/queries",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return [[c["v"] for c in row["f"]] for row in json.load(r).get("rows", [])]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mysql-port", required=True)
    p.add_argument("--emulator", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--every", type=float, required=True)
    p.add_argument("--label", default="")
    a = p.parse_args()
    mysql = ["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{a.mysql_port}", "-uroot", "-N", "-B"]
    committed = {}  # id -> commit time (epoch seconds)
    seen = {}  # id -> first time visible
    done = threading.Event()

    def poll():
        while not done.is_set() or len(seen) < len(committed):
            try:
                rows = query(a.emulator, a.project, f"SELECT id FROM `{a.dataset}`.probe")
            except Exception:  # the table appears with the first apply
                rows = []
            now = time.time()
            for (i,) in rows:
                seen.setdefault(int(i), now)
            if done.is_set() and time.time() > deadline_after_done[0]:
                break
            time.sleep(0.2)

    deadline_after_done = [float("inf")]
    poller = threading.Thread(target=poll)
    poller.start()
    end = time.time() + a.seconds
    while time.time() < end:
        out = subprocess.run(
            mysql + ["-e", "INSERT INTO cdc_bench.probe (committed_at) VALUES (NOW(6)); "
                           "SELECT LAST_INSERT_ID(), UNIX_TIMESTAMP(NOW(6));"],
            capture_output=True, text=True, check=True).stdout.split()
        committed[int(out[0])] = float(out[1])
        time.sleep(a.every)
    done.set()
    deadline_after_done[0] = time.time() + 120
    poller.join()
    latencies = sorted(seen[i] - t for i, t in committed.items() if i in seen)
    missing = len(committed) - len(latencies)
    if not latencies:
        print(f"    {a.label}: no probe row became visible")
        return
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(f"    {a.label}: {len(latencies)} probes, commit-to-visible p50 {pick(0.5):.2f} s, "
          f"p95 {pick(0.95):.2f} s, max {latencies[-1]:.2f} s" + (f", {missing} never seen" if missing else ""))


if __name__ == "__main__":
    main()
