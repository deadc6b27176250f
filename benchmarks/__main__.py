"""`python -m benchmarks [NAME ...] [--quick]`: run the benchmarks on one local stack, print every figure
with the command that reproduces it, and (for a full run) write docs/benchmarks.md and docs/benchmarks.png.

A subset or a --quick run prints only, unless --write is given, so docs/ keeps the full run's figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import bench_calls, bench_complete, bench_pipeline, bench_poller, bench_submit
from benchmarks.common import ROOT, BenchRun, Section, local_stack, machine_info, md_table

BENCHMARKS = {m.NAME: m for m in (bench_pipeline, bench_submit, bench_complete, bench_poller, bench_calls)}


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# -- the report ----------------------------------------------------------------------------------------


def write_plot(sections: list[Section], path: Path) -> bool:
    """docs/benchmarks.png: one panel per benchmark that ran, plus the ratios. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    by = {s.name: s.plot for s in sections}
    plt.rcParams.update({"axes.titlesize": 10, "font.size": 9})
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    panels = iter(axes.flat)
    ratios: dict[str, float] = {}
    if "pipeline" in by:
        p, ax = by["pipeline"], next(panels)
        left = 0.0
        for (name, value), colour in zip(p["segments"].items(), plt.cm.tab10.colors, strict=False):
            ax.barh("local stack", value, left=left, color=colour, label=name.split(" (")[0])
            left += value
        ax.barh("bare encoder", p["bare"], color="grey")
        ax.set_xlabel("seconds")
        ax.set_title(f"1. {p['n']:,} passages, upload to event:\n{p['overhead']:+.0f}% over the bare encoder (target 10%)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
        ratios["pipeline / bare encoder"] = p["total"] / p["bare"]
    if "submit" in by:
        p, ax = by["submit"], next(panels)
        ax.plot(p["sizes"], p["rss"], "o-", label="peak RSS (VmHWM)")
        for size, rss, secs, name in zip(p["sizes"], p["rss"], p["seconds"], p["names"], strict=True):
            ax.annotate(f"{name.split('.')[-1]} {secs:.0f} s", (size, rss), textcoords="offset points", xytext=(4, 6),
                        fontsize=8)
        ax.axhline(p["limit"], color="red", linestyle="--", label=f"target {p['limit']} MB")
        ax.set_xscale("log")
        ax.set_xlabel("input MB")
        ax.set_ylabel("MB")
        ax.set_ylim(0, max(max(p["rss"]), p["limit"]) * 1.2)
        ax.set_title("2. submit: peak RSS by input size (seconds annotated)")
        ax.legend(fontsize=8)
    if "complete" in by:
        p, ax = by["complete"], next(panels)
        names = list(p["stages"]) + ["numpy norm + save"]
        values = list(p["stages"].values()) + [p["numpy"]]
        ax.barh(names, values, color=["tab:blue"] * len(p["stages"]) + ["grey"])
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.set_title(f"3. complete {p['n']:,} x 768: {p['complete']:.1f} s (target 10 s),\n"
                     f"peak RSS {p['rss']:.0f} MB (target 500 MB); seconds by stage")
        ratios["complete / numpy"] = p["complete"] / p["numpy"]
    if "poller" in by:
        p, ax = by["poller"], next(panels)
        x = range(2)
        ax.bar([i - 0.2 for i in x], [p["reads"], p["writes"]], 0.4, label="measured")
        ax.bar([i + 0.2 for i in x], [p["min_reads"], p["min_writes"]], 0.4, label="minimum", color="grey")
        ax.set_xticks(list(x), ["document reads", "document writes"])
        ax.set_title(f"4. poller run, {p['due']} due of 1,000 jobs: {p['seconds']:.1f} s")
        ax.legend(fontsize=8)
        ratios["poller reads / minimum"] = p["reads"] / p["min_reads"]
        ratios["poller writes / minimum"] = p["writes"] / p["min_writes"]
    if "calls" in by:
        p, ax = by["calls"], next(panels)
        kinds = ["uploads", "creates", "gets", "downloads"]
        width = 0.8 / len(p["jobs"])
        for j, job in enumerate(p["jobs"]):
            ax.bar([i + j * width for i in range(len(kinds))], [job["calls"].get(k, 0) / job["batches"] for k in kinds],
                   width, label=job["label"])
        ax.axhline(1, color="red", linestyle="--", label="minimum (1 per batch)")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(kinds))], kinds)
        ax.set_ylabel("calls per batch")
        ax.set_title("5. Gemini API calls per batch")
        ax.legend(fontsize=8)
        ratios.update({f"gets per batch ({job['label']})": job["calls"].get("gets", 0) / job["batches"]
                       for job in p["jobs"][:1]})
    ax = next(panels)
    if ratios:
        ax.barh(list(ratios), list(ratios.values()), color="tab:orange")
        ax.axvline(1, color="black", linewidth=0.8)
        ax.set_xscale("log")
        for i, value in enumerate(ratios.values()):
            ax.annotate(f"{value:.2f}x", (value, i), textcoords="offset points", xytext=(4, -3), fontsize=8)
        ax.invert_yaxis()
        ax.set_title("ratios (1 = the baseline or the minimum)")
    for rest in panels:
        rest.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_markdown(sections: list[Section], machine: dict, path: Path, plot: bool) -> None:
    targets = [[s.title.split(".")[0], t.what, t.measured, "met" if t.met else "**missed**"]
               for s in sections for t in s.targets]
    facts = [
        ["date", machine["date"]], ["CPU", f"{machine['cpu']}, {machine['cores']} cores"],
        ["RAM", f"{machine['ram_gb']} GB"], ["OS", machine["os"]], ["Python", machine["python"]],
        ["Java (emulators)", machine["java"]], ["commit", machine["commit"]],
        ["load average (1/5/15 min)", f"{machine['load_before']} before, {machine['load_after']} after"],
        ["local stack start", f"{machine.get('stack_start_seconds', '?')} s"],
        ["whole run", f"{machine['total_seconds']} s"],
    ]
    versions = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    parts = [
        "# Benchmarks\n",
        "Written by `make bench` (`python -m benchmarks`): every figure on this page comes from one run, on one "
        "local stack (`infra/local/stack.py`, free ports), and the command under each heading reproduces it "
        "alone (`--quick` for smaller sizes). Other work on the machine during the run shows in the load "
        "average; ratios measured within the run (stack against bare encoder, complete against numpy) "
        "compare better across machines than seconds.\n",
        md_table(["", ""], facts) + "\n",
        f"Packages: {versions}.\n",
        "Not run by `make bench`: `benchmarks/bench_ingest.py` (the readers on 1 GB inputs), "
        "`benchmarks/bench_emulator.py` (the emulator against its bare encoder) and `benchmarks/bench_models.py` "
        "(model choice); their docstrings say how to run them.\n",
        "## Targets\n",
        md_table(["#", "target", "measured", ""], targets) + "\n",
    ]
    if plot:
        parts.append("![benchmarks](benchmarks.png)\n")
    parts += [s.markdown() for s in sections]
    path.write_text("\n".join(parts))


# -- the command line ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"a subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, minutes)")
    parser.add_argument("--with-txt", action="store_true", help="submit: also a .txt input of the largest size")
    parser.add_argument("--write", action="store_true", help="write docs/ even for a subset or --quick run")
    parser.add_argument("--keep-logs", action="store_true", help="keep the stack's logs in .local/bench-PID")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    write = args.write or (not args.quick and names == list(BENCHMARKS))

    machine = machine_info()
    machine["load_before"] = _load()
    print(f"{machine['date']}: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM, "
          f"Python {machine['python']}; load average {machine['load_before']}", flush=True)
    started = time.monotonic()
    sections: list[Section] = []
    failures: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=ROOT / ".local"))
    try:
        stack_began = time.monotonic()
        with local_stack(keep_logs=args.keep_logs) as stack:
            machine["stack_start_seconds"] = round(time.monotonic() - stack_began, 1)
            print(f"local stack up in {machine['stack_start_seconds']} s", flush=True)
            bench = BenchRun(stack=stack, quick=args.quick, workdir=workdir, with_txt=args.with_txt)
            for name in names:
                print(f"\n== {name} (load average {_load()}) ==", flush=True)
                began = time.monotonic()
                try:
                    section = BENCHMARKS[name].run(bench)
                except Exception:  # noqa: BLE001 - one benchmark's failure is reported, the others still run
                    failures.append(name)
                    traceback.print_exc()
                    continue
                finally:
                    for leftover in workdir.iterdir():
                        leftover.unlink()
                section.seconds = time.monotonic() - began
                sections.append(section)
                print(section.markdown(), flush=True)
                print(f"({name}: {section.seconds:.0f} s)", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine["load_after"] = _load()
    machine["total_seconds"] = round(time.monotonic() - started)

    targets = [[s.title.split(".")[0], t.what, t.measured, "met" if t.met else "MISSED"]
               for s in sections for t in s.targets]
    print("\n" + md_table(["#", "target", "measured", ""], targets))
    print(f"\nall done in {machine['total_seconds']} s; load average {machine['load_before']} before, "
          f"{machine['load_after']} after")
    if write and sections:
        plot = write_plot(sections, ROOT / "docs" / "benchmarks.png")
        write_markdown(sections, machine, ROOT / "docs" / "benchmarks.md", plot)
        print(f"wrote docs/benchmarks.md{' and docs/benchmarks.png' if plot else ''}")
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
