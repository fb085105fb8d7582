"""Reports of the load commands: the step-load table of `python -m clients load --steps`, and the
two-panel plot both it and `python -m clients overload` draw (offered, answered and refused rates;
the answered requests' p50/p99), from rows with sent_per_s, answered_per_s, refused_per_s, p50_ms,
p99_ms."""
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


def plot_rates_and_latency(path: Path, x: list, rows: list[dict], title: str, xlabel: str, marker: str = "",
                           capacity: float | None = None, bound_ms: float | None = None):
    """Left: offered, answered and refused requests/s over x; right: answered p50/p99 over x."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (rates, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (("sent_per_s", "offered (sent)"), ("answered_per_s", "answered"),
                       ("refused_per_s", "refused (busy)")):
        rates.plot(x, [r[key] for r in rows], marker, label=label)
    if capacity:
        rates.axhline(capacity, color="gray", ls="--", label="capacity")
    rates.set(xlabel=xlabel, ylabel="requests/s", title=title)
    rates.legend()
    for key, label in (("p50_ms", "answered p50"), ("p99_ms", "answered p99")):
        lat.plot(x, [r[key] for r in rows], marker, label=label)
    if bound_ms:
        lat.axhline(bound_ms, color="red", ls="--", label="p99 bound")
    lat.set(xlabel=xlabel, ylabel="ms", title="Latency of the answered requests")
    lat.set_ylim(bottom=0)
    lat.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_steps(doc: dict, path: Path):
    steps = doc.get("steps") or []
    if steps:
        plot_rates_and_latency(path, [str(r["users"]) for r in steps], steps, f"{doc['model']}: step load",
                               "users in the step", marker="o-")
