#!/usr/bin/env python3
"""Plots benches/results/latest.json: intake throughput and p99 against concurrency,
for the relay (SQLite, PostgreSQL) and the bare axum 202 ceiling measured in the same run.

Usage: python3 benches/plot.py benches/results/latest.json benches/results/intake.png
Needs matplotlib (`pip install matplotlib`)."""
import json
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("plot skipped: matplotlib is not installed (pip install matplotlib)")
    sys.exit(1)

src, out = sys.argv[1], sys.argv[2]
data = json.load(open(src))
series = {}
for row in data["intake"]:
    label = "bare axum 202 (ceiling)" if row["target"] == "bare" else f"relay ({row['store']})"
    series.setdefault(label, []).append(
        (row["concurrency"], row["result"]["rps"], row["result"]["p99_ms"])
    )

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
styles = {"bare": ("tab:gray", "--"), "sqlite": ("tab:blue", "-"), "postgres": ("tab:green", "-")}
for label, points in series.items():
    points.sort()
    key = "bare" if label.startswith("bare") else ("sqlite" if "sqlite" in label else "postgres")
    color, ls = styles[key]
    xs = [p[0] for p in points]
    ax1.plot(xs, [p[1] for p in points], marker="o", color=color, ls=ls, label=label)
    ax2.plot(xs, [p[2] for p in points], marker="o", color=color, ls=ls, label=label)
    for x, y in zip(xs, [p[1] for p in points]):
        ax1.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 6),
                     ha="center", fontsize=8, color=color)
    for x, y in zip(xs, [p[2] for p in points]):
        ax2.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6),
                     ha="center", fontsize=8, color=color)

# The SQLite store alone (in-process, no HTTP) at c=64, and 50 % of the ceiling there: the
# store's own limit shows why the relay cannot reach the intake target.
ceiling = data.get("store_ceiling_c64", {})
for key, label, marker in [("hashed_keys", "SQLite store alone (no HTTP)", "D"),
                           ("sequential_keys", "store alone, sequential dedup keys (experiment)", "^")]:
    if key in ceiling:
        y = ceiling[key]["rps"]
        ax1.plot([64], [y], marker=marker, color="tab:orange", ls="none", label=label)
        ax1.annotate(f"{y:.0f}", (64, y), textcoords="offset points", xytext=(-8, 4),
                     ha="right", fontsize=8, color="tab:orange")
bare64 = [p[1] for p in series.get("bare axum 202 (ceiling)", []) if p[0] == 64]
if bare64:
    ax1.plot([64], [bare64[0] / 2], marker="_", markersize=18, color="tab:red", ls="none",
             label="target: 50 % of the ceiling at c=64")

for ax in (ax1, ax2):
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 16, 64])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("concurrent clients")
    ax.grid(True, alpha=0.3)
ax1.set_title("Intake throughput (higher is better)")
ax1.set_ylabel("requests / s (2xx)")
ax1.set_ylim(bottom=0)
ax2.set_title("Intake p99 latency (lower is better)")
ax2.set_ylabel("p99 ms")
ax2.set_yscale("log")
ax2.axhline(10, color="tab:red", lw=0.8, ls=":", label="target p99 10 ms @ c=16")
ax1.legend(fontsize=8, loc="upper left")
ax2.legend(fontsize=8, loc="upper left")
m = data.get("machine", {})
fig.suptitle(f"dingtalk-relay intake vs bare axum ceiling, one run — {m.get('nproc')} CPUs, {m.get('cpu_model')}",
             fontsize=10)
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"plotted {out}")
