"""`python -m benchmarks [NAME ...] [--quick]`: run the benchmarks, print every figure with the command that
reproduces it, and (for a full run) write docs/benchmarks.md and docs/benchmarks.png.

A subset or a --quick run prints only, unless --write is given, so docs/ keeps the full run's figures.
Benchmarks run in the order below: those on the default local stack first, then those that start stacks of
their own (the default one is stopped before), then the one over in-memory fakes.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType

from benchmarks.common import ROOT, BenchRun, Section, load_average, machine_info, md_table

MODULES = ("bench_pipeline", "bench_submit", "bench_complete", "bench_poller", "bench_calls", "bench_quota",
           "bench_bounded", "bench_fanout", "bench_reuse", "bench_scale")


def _modules() -> dict[str, ModuleType]:
    found = [importlib.import_module(f"benchmarks.{name}") for name in MODULES]
    return {module.NAME: module for module in found}


# -- the report ----------------------------------------------------------------------------------------


def write_plot(sections: list[Section], modules: dict[str, ModuleType], path: Path) -> bool:
    """docs/benchmarks.png: one panel per benchmark that has one (its module's `plot(ax, data)`).
    False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    drawn = [s for s in sections if s.plot and hasattr(modules[s.name], "plot")]
    if not drawn:
        return False
    plt.rcParams.update({"axes.titlesize": 10, "font.size": 8})
    columns = 3
    rows = (len(drawn) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(18, 5 * rows), squeeze=False)
    panels = iter(axes.flat)
    for section in drawn:
        modules[section.name].plot(next(panels), section.plot)
    for rest in panels:
        rest.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def write_markdown(sections: list[Section], machine: dict, path: Path, plot: bool, skipped: list[str]) -> None:
    targets = [[s.title.split(".")[0], t.what, t.measured, "met" if t.met else "**missed**"]
               for s in sections for t in s.targets]
    stacks = ", ".join(f"{label} {seconds} s" for label, seconds in machine.get("stack_seconds", {}).items())
    facts = [
        ["date", machine["date"]], ["CPU", f"{machine['cpu']}, {machine['cores']} cores"],
        ["RAM", f"{machine['ram_gb']} GB"], ["OS", machine["os"]], ["Python", machine["python"]],
        ["Java (emulators)", machine["java"]], ["commit", machine["commit"]],
        ["load average (1/5/15 min)", f"{machine['load_before']} before, {machine['load_after']} after"],
        ["local stacks started (seconds to answer)", stacks or "none"],
        ["whole run", f"{machine['total_seconds']} s"],
    ]
    versions = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    parts = [
        "# Benchmarks\n",
        "Written by `make bench` (`python -m benchmarks`): every figure on this page comes from one run; the "
        "command under each heading reproduces it alone (`--quick` for smaller sizes). Benchmarks run on local "
        "stacks (`infra/local/stack.py`, free ports: the default one, or one with the settings the benchmark "
        "names) or over the in-memory fakes. The machine is shared: other work during the run shows in the "
        "load average, given for the whole run and at the end of each benchmark; ratios measured within one "
        "run compare better across machines than seconds.\n",
        md_table(["", ""], facts) + "\n",
        f"Packages: {versions}.\n",
        "Not run by `make bench`: `benchmarks/bench_ingest.py` (the readers on 1 GB inputs), "
        "`benchmarks/bench_passages.py` (the splitter's stability and the cost of resuming a read), "
        "`benchmarks/bench_emulator.py` (the emulator against its bare encoder), `benchmarks/emulator_load.py` "
        "(the emulator alone: one batch against eight, beside a busy neighbour or not, onnxruntime's threads "
        "spinning or not) and `benchmarks/bench_models.py` (model choice); their docstrings say how to run them.\n",
        *([f"Not in this run: {', '.join(skipped)} (`python -m benchmarks {' '.join(skipped)}`; their last "
           "figures are in this file's history).\n"] if skipped else []),
        "## Targets\n",
        md_table(["#", "target", "measured", ""], targets) + "\n",
    ]
    if plot:
        parts.append("![benchmarks](benchmarks.png)\n")
    parts += [s.markdown() for s in sections]
    path.write_text("\n".join(parts))


# -- the command line ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    modules = _modules()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"a subset of: {', '.join(modules)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, minutes)")
    parser.add_argument("--with-txt", action="store_true", help="submit: also a .txt input of the largest size")
    parser.add_argument("--write", action="store_true", help="write docs/ even for a subset or --quick run")
    parser.add_argument("--keep-logs", action="store_true", help="keep the stacks' logs in .local/bench-PID-*")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in modules]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(modules)}")
    names = [n for n in modules if n in args.names] if args.names else list(modules)
    write = args.write or (not args.quick and names == list(modules))

    machine = machine_info()
    machine["load_before"] = load_average()
    print(f"{machine['date']}: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM, "
          f"Python {machine['python']}; load average {machine['load_before']}", flush=True)
    started = time.monotonic()
    sections: list[Section] = []
    failures: list[str] = []
    (ROOT / ".local").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-work-", dir=ROOT / ".local"))
    bench = BenchRun(quick=args.quick, workdir=workdir, with_txt=args.with_txt, keep_logs=args.keep_logs)
    try:
        for name in names:
            print(f"\n== {name} (load average {load_average()}) ==", flush=True)
            began = time.monotonic()
            try:
                section = modules[name].run(bench)
            except Exception:  # noqa: BLE001 - one benchmark's failure is reported, the others still run
                failures.append(name)
                traceback.print_exc()
                continue
            finally:
                for leftover in workdir.iterdir():
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            section.seconds = time.monotonic() - began
            section.load = load_average()
            sections.append(section)
            print(section.markdown(), flush=True)
    finally:
        bench.stop_default()
        shutil.rmtree(workdir, ignore_errors=True)
    machine["stack_seconds"] = bench.stack_seconds
    machine["load_after"] = load_average()
    machine["total_seconds"] = round(time.monotonic() - started)

    targets = [[s.title.split(".")[0], t.what, t.measured, "met" if t.met else "MISSED"]
               for s in sections for t in s.targets]
    print("\n" + md_table(["#", "target", "measured", ""], targets))
    print(f"\nall done in {machine['total_seconds']} s; load average {machine['load_before']} before, "
          f"{machine['load_after']} after")
    if write and sections:
        plot = write_plot(sections, modules, ROOT / "docs" / "benchmarks.png")
        write_markdown(sections, machine, ROOT / "docs" / "benchmarks.md", plot,
                       [name for name in modules if name not in {s.name for s in sections}])
        print(f"wrote docs/benchmarks.md{' and docs/benchmarks.png' if plot else ''}")
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
