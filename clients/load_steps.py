"""The step-load report of `python -m clients load --steps`: one table row and one plot point per step
(offered and answered rates, refusals of a busy server, p50/p99 of the answered requests)."""
from __future__ import annotations

from pathlib import Path

from contract.files import atomic_write
from contract.tables import markdown_table


def step_table(steps: list[dict]) -> str:
    ms = lambda x: "-" if x is None else f"{x:.0f}"
    rows = [[r["step"], r["users"], "-" if r["asked_per_s"] is None else f"{r['asked_per_s']:.0f}",
             f"{r['sent_per_s']:.1f}", f"{r['answered_per_s']:.1f}", f"{r['refused_per_s']:.1f}", r["failed"],
             ms(r["p50_ms"]), ms(r["p99_ms"])] for r in steps]
    return markdown_table(["step", "users", "asked/s", "offered (sent)/s", "answered/s", "refused/s", "failed",
                           "p50 ms", "p99 ms"], rows, align=["r"] * 9)


def plot_steps(doc: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = doc.get("steps") or []
    if not steps:
        return
    x = [f"{r['users']}" for r in steps]
    fig, (rates, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (("sent_per_s", "offered (sent)"), ("answered_per_s", "answered"),
                       ("refused_per_s", "refused (busy)")):
        rates.plot(x, [r[key] for r in steps], "o-", label=label)
    rates.set_xlabel("users in the step")
    rates.set_ylabel("requests/s")
    rates.set_title(f"{doc['model']}: step load")
    rates.legend()
    for key, label in (("p50_ms", "answered p50"), ("p99_ms", "answered p99")):
        lat.plot(x, [r[key] for r in steps], "o-", label=label)
    lat.set_xlabel("users in the step")
    lat.set_ylabel("ms")
    lat.set_ylim(bottom=0)
    lat.set_title("Latency of the answered requests")
    lat.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
