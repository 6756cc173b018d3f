#!/usr/bin/env python3
"""Scaling benchmark: initoverlayfs against plain initramfs (lz4, zstd) as stage-two content grows.

    python3 qemu/bench.py                    # full: 10/60/250/500 MB, 3 boots each, min RAM, build times
    python3 qemu/bench.py --update-readme    # ... and put the results into README.md
    python3 qemu/bench.py --quick            # CI: one size, one boot per variant

Every size is built three times from the default profile plus the same payload (initoverlayfs with an
lz4 stage one; plain lz4; plain zstd) and booted on one QEMU machine (see benchlib). Outputs: a markdown
table on stdout, and results/SERIES/latest.{json,svg,md} (or --out), SERIES being the kernel's
major.minor (6.1, 6.12): each kernel has its own results and its own README block.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchlib as bl
import buildbench
import minram
import payload as pl
import report

HERE = Path(__file__).resolve().parent
DEFAULT_BOOTS = 3  # the full run: enough to see a spread; --quick boots once


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,60,250,500", help="payload sizes in MB (default 10,60,250,500)")
    ap.add_argument("--boots", type=int, default=DEFAULT_BOOTS, help="boots per variant and size (default 3)")
    ap.add_argument("--quick", action="store_true", help="CI: one size, one boot each")
    ap.add_argument("--no-minram", action="store_true", help="skip the minimum-RAM probe")
    ap.add_argument("--no-build-bench", action="store_true", help="skip the build-time benchmark")
    ap.add_argument("--build-reps", type=int, default=3, help="runs per build-benchmark tool (default 3)")
    ap.add_argument("--kver", help="kernel version (default: the newest installed)")
    ap.add_argument("--memory", type=int, default=2048, help="guest RAM in MiB (default 2048)")
    ap.add_argument("--timeout", type=float, default=600.0, help="host seconds per boot (default 600)")
    ap.add_argument("--no-icount", action="store_true", help="KVM if it works, else TCG; not repeatable")
    bl.add_machine_arg(ap)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/initbuild-bench"), help="builds and logs")
    ap.add_argument(
        "--out", type=Path, help="results directory (default qemu/results/SERIES; --quick: WORKDIR/results)"
    )
    ap.add_argument("--update-readme", action="store_true", help="rewrite the README's bench block")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.boots, args.no_minram, args.no_build_bench = "10", 1, True, True
    if args.out is None:
        args.out = args.workdir / "results" if args.quick else None  # set once the kernel is known
    args.sizes = sorted({int(s) for s in str(args.sizes).split(",") if s.strip()})
    return args


def measure_size(
    p: pl.Payload, kver: str, root: Path, args: argparse.Namespace
) -> tuple[list[report.Result], bl.Machine]:
    """Build the three variants of one payload and boot each on the same machine."""
    out = args.workdir / p.label
    bl.say(f"== payload {p.label}: {p.size / 1e6:.1f} MB in {len(p.chunks)} pieces")
    images = {}
    for v in bl.VARIANTS:
        bl.say(f"building {v.name} ...")
        images[v.name] = bl.build_variant(v, kver, out / v.name, p.files())
        im = images[v.name]
        bl.say(f"  {im.initrd_bytes / 1e6:.1f} MB initrd, {im.stage2_bytes / 1e6:.1f} MB stage two, "
               f"{im.build_seconds:.1f} s")  # fmt: skip
    stage2 = images[bl.OVERLAY.name].stage2
    assert stage2 is not None
    machine = bl.machine_from_args(kver, root, stage2, args)
    results = []
    for v in bl.VARIANTS:
        name = f"{p.label}-{v.name}"
        initrd = images[v.name].initrd
        samples = bl.boot_n(machine, initrd, args.boots, args.workdir / "logs", name, progress=bl.say)
        results.append(report.Result(p.label, p.size, images[v.name], samples))
    return results, machine


def measure_floor(machine: bl.Machine, args: argparse.Namespace) -> dict[str, Any]:
    """Kernel-only floor: same machine, an initramfs with busybox and an /init that only reports."""
    initrd = bl.make_floor_initrd(args.workdir / "floor.img")
    samples = bl.boot_n(machine, initrd, args.boots, args.workdir / "logs", "floor", marker=bl.FLOOR_MARKER)
    st = bl.summarize(samples)
    return {
        "initrd_bytes": initrd.stat().st_size,
        "ok": sum(s.ok for s in samples),
        "stats": bl.stats_json(st),
        "run_init": bl.median_of(st, "run_init"),
        "marker": bl.median_of(st, "userspace"),
    }


# -- analysis: the acceptance points ------------------------------------------------------------------


def by(results: Sequence[report.Result], variant: str) -> list[report.Result]:
    return sorted((r for r in results if r.images.variant.name == variant), key=lambda r: r.payload_bytes)


def nearest(rs: Sequence[report.Result], mb: float) -> report.Result | None:
    return min(rs, key=lambda r: abs(r.payload_bytes / 1e6 - mb), default=None)


def crossover(ov: Sequence[report.Result], plain: Sequence[report.Result]) -> str:
    """Payload size where plain becomes slower than initoverlayfs (linear interpolation)."""
    pts = []
    for a, b in zip(ov, plain, strict=True):
        ta, tb = a.median("userspace"), b.median("userspace")
        if ta is not None and tb is not None:
            pts.append((a.payload_bytes / 1e6, tb - ta))
    if not pts:
        return "n/a"
    if pts[0][1] >= 0:
        return f"below {pts[0][0]:.0f} MB (plain already slower at the smallest size)"
    for (x0, d0), (x1, d1) in zip(pts, pts[1:], strict=False):
        if d0 < 0 <= d1:
            return f"~{x0 + (x1 - x0) * (-d0) / (d1 - d0):.0f} MB of payload"
    return f"above {pts[-1][0]:.0f} MB (plain still faster at the largest size)"


def analyse(results: Sequence[report.Result], floor: dict[str, Any] | None) -> dict[str, Any]:
    ov, lz4, zstd = by(results, "initoverlayfs"), by(results, "plain-lz4"), by(results, "plain-zstd")
    a: dict[str, Any] = {}
    spreads = [
        (r.label, r.images.variant.name, st.spread)
        for r in results
        if len(r.samples) > 1 and (st := r.stats.get("userspace"))
    ]
    a["determinism_max_spread_s"] = max((s for *_, s in spreads), default=None)
    a["determinism_spreads"] = [[lbl, v, round(s, 6)] for lbl, v, s in spreads]
    small, mid = (ov[0] if ov else None), nearest(ov, 250)
    if small and mid and (t0 := small.median("userspace")) and (t1 := mid.median("userspace")):
        a["flatness"] = {"small": small.label, "mid": mid.label, "t_small": t0, "t_mid": t1}
        a["flatness"]["rel"] = t1 / t0 - 1
    if mid:
        for name, rs in (("plain-lz4", lz4), ("plain-zstd", zstd)):
            p = nearest(rs, 250)
            if p and (tp := p.median("userspace")) and (to := mid.median("userspace")):
                a[f"ratio_{name}_at_{mid.label}"] = to / tp
    a["crossover_plain_lz4"] = crossover(ov, lz4)
    a["crossover_plain_zstd"] = crossover(ov, zstd)
    if small and lz4:
        first = next((s for s in small.samples if s.ok), None)
        to, tp = small.median("userspace"), lz4[0].median("userspace")
        a["stage1"] = {
            "overhead_vs_plain_lz4_s": (to - tp) if to and tp else None,
            "stage1_seconds": _diff(small.median("stage2_start"), small.median("run_init")),
            "steps": step_rows(first),
        }
        a["plain_steps_small"] = step_rows(next((s for s in lz4[0].samples if s.ok), None))
    if floor:
        a["floor"] = {"run_init": floor["run_init"], "marker": floor["marker"]}
    a["memory"] = {moment: memory_points(ov, lz4, zstd, metric) for moment, metric in MEM_MOMENTS.items()}
    return a


# Where MemAvailable is read: the acceptance is about the initramfs's userspace (stage two start).
MEM_MOMENTS = {"stage_two": "stage2_memavailable_kb", "real_root": "memavailable_kb"}
MEM_MOMENT_WORDS = {"stage_two": "at initramfs userspace (stage two start)", "real_root": "at the real root"}
MEM_FLAT_MIB = 5.0  # acceptance: initoverlayfs MemAvailable equal at every size within +-5 MiB


def memory_points(
    ov: Sequence[report.Result], lz4: Sequence[report.Result], zstd: Sequence[report.Result], metric: str
) -> dict[str, Any]:
    """initoverlayfs's MemAvailable range over sizes, and its gain over plain at ~250 MB (in MiB)."""
    out: dict[str, Any] = {}
    mems = [m for r in ov if (m := r.median(metric)) is not None]
    if mems:
        out["overlay_range_mib"] = (max(mems) - min(mems)) / 1024
    mid = nearest(ov, 250)
    mo = mid.median(metric) if mid else None
    if mid is None or mo is None:
        return out
    out["mid_label"] = mid.label
    out["payload_at_mid_mib"] = mid.payload_bytes / (1 << 20)
    for name, rs in (("plain-lz4", lz4), ("plain-zstd", zstd)):
        p = nearest(rs, 250)
        if p and (mp := p.median(metric)) is not None:
            out[f"gain_over_{name}_mib"] = (mo - mp) / 1024
    return out


def step_rows(s: bl.Sample | None) -> list[list[Any]]:
    """[printk time, seconds since the previous step, message] from Run /init on."""
    if s is None:
        return []
    return [[round(t, 6), round(d, 6), m] for t, d, m in bl.step_deltas(s.steps, s.run_init)]


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


# The goals for time to userspace at ~250 MB, as a fraction of plain's.
RATIO_GOALS = {"plain-lz4": 0.60, "plain-zstd": 0.45}


def ratio_line(key: str, v: float) -> str:
    """'ratio_plain-lz4_at_250MB' -> the sentence, with three decimals so a miss is not rounded away."""
    _, name, _, lbl = key.split("_", 3)
    goal = RATIO_GOALS.get(name)
    verdict = f" (goal <= {goal:.2f}: {'met' if v <= goal else 'NOT met'})" if goal is not None else ""
    return f"- At {lbl}: initoverlayfs takes {v:.3f}x the time of {name}{verdict}."


def summary_lines(a: dict[str, Any], minram_: list[minram.Probe]) -> list[str]:
    """The acceptance numbers in words."""
    out = []
    if a.get("determinism_max_spread_s") is not None:
        ms = a["determinism_max_spread_s"] * 1000
        out.append(f"- Repeatability: identical boots differ by at most {ms:.3f} ms (goal 5 ms).")
    if f := a.get("flatness"):
        out.append(
            f"- initoverlayfs time to userspace: {f['t_small']:.3f} s at {f['small']}, {f['t_mid']:.3f} s at "
            f"{f['mid']} ({f['rel'] * 100:+.1f}%)."
        )
    for k, v in a.items():
        if k.startswith("ratio_"):
            out.append(ratio_line(k, v))
    out.append(f"- Crossover: plain-lz4 {a['crossover_plain_lz4']}; plain-zstd {a['crossover_plain_zstd']}.")
    if s1 := a.get("stage1"):
        fl = a.get("floor") or {}
        out.append(
            f"- Smallest size: stage one runs {report.fmt(s1['stage1_seconds'])} s (Run /init to stage two); "
            f"initoverlayfs - plain-lz4 = {report.fmt(s1['overhead_vs_plain_lz4_s'])} s. Kernel-only floor: "
            f"Run /init at {report.fmt(fl.get('run_init'))} s, a trivial /init's marker at "
            f"{report.fmt(fl.get('marker'))} s."
        )
    for moment, points in a.get("memory", {}).items():
        out += memory_lines(MEM_MOMENT_WORDS[moment], points, primary=moment == "stage_two")
    for p in minram_:
        out.append(f"- Smallest -m reaching the real root, largest payload, {p.variant}: {p.min_mb} MiB.")
    return out


def memory_lines(where: str, m: dict[str, Any], *, primary: bool) -> list[str]:
    """MemAvailable in words; at the primary moment, against the acceptance (flat within 5 MiB, and a gain
    over plain of at least the uncompressed payload at ~250 MB)."""
    out = []
    if (rng := m.get("overlay_range_mib")) is not None:
        met = "met" if rng <= 2 * MEM_FLAT_MIB else "NOT met"
        goal = f" (goal: all within +-{MEM_FLAT_MIB:.0f} MiB of one value: {met})"
        out.append(f"- MemAvailable {where}: initoverlayfs varies by {rng:.1f} MiB over all sizes"
                   f"{goal if primary else ''}.")  # fmt: skip
    for name in ("plain-lz4", "plain-zstd"):
        if (gain := m.get(f"gain_over_{name}_mib")) is None:
            continue
        payload = m["payload_at_mid_mib"]
        verdict = f"; goal >= payload: {'met' if gain >= payload else 'NOT met'}" if primary else ""
        out.append(
            f"- MemAvailable {where}, {m['mid_label']}: initoverlayfs has {abs(gain):.0f} MiB "
            f"{'more' if gain >= 0 else 'less'} than {name} "
            f"(payload {payload:.0f} MiB uncompressed{verdict})."
        )
    return out


def steps_table(steps: list[list[Any]], title: str) -> str:
    rows = [f"{title}\n", "| printk time (s) | since previous (ms) | step |", "|---:|---:|---|"]
    rows += [f"| {t:.6f} | {d * 1000:.1f} | {m} |" for t, d, m in steps]
    return "\n".join(rows)


# -- outputs --------------------------------------------------------------------------------------------


def write_outputs(
    args: argparse.Namespace, data: dict[str, Any], results: list[report.Result], md: str
) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(data, indent=1) + "\n")
    sub = f"{data['kernel']}, {data['accel']}, {data['machine']}, -m {data['memory_mb']}, {data['when']}"
    (out / "latest.svg").write_text(report.svg_plot(results, sub))
    (out / "latest.md").write_text(md + "\n")
    bl.say(f"wrote {out}/latest.json, latest.svg, latest.md")


def kernel_series(kver: str) -> str:
    """6.12.117+deb12-cloud-amd64 -> 6.12."""
    return ".".join(kver.split("-")[0].split("+")[0].split(".")[:2])


def readme_block(md_table: str, summary: list[str], data: dict[str, Any]) -> str:
    sizes = ",".join(str(s) for s in data["sizes_mb"])
    series = kernel_series(data["kernel"])
    res = f"qemu/results/{series}"
    boots = f" --kver {data['kernel']}"
    boots += f" --boots {data['boots']}" if data["boots"] != DEFAULT_BOOTS else ""
    if data["machine"] != "pc":
        boots += f" --machine {data['machine']}"
    return "\n".join(
        [
            f"Latest run: {data['when']}, initbuild {data['initbuild_commit']}, kernel {data['kernel']}, "
            f"{data['accel']}, machine {data['machine']}, -m {data['memory_mb']}, "
            f"{data['boots']} boots per variant "
            f"(`python3 qemu/bench.py --sizes {sizes}{boots} --update-readme`).",
            "",
            f"![time to userspace and MemAvailable against payload size, Linux {series}]({res}/latest.svg)",
            "",
            md_table,
            "",
            *summary,
            "",
            "Details (per-step stage-one times, build times): "
            f"[{res}/latest.md]({res}/latest.md); "
            f"raw numbers: [{res}/latest.json]({res}/latest.json).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bl.quiet_builds()
    kver = bl.kernel_version(args.kver)
    if args.out is None:
        args.out = HERE / "results" / kernel_series(kver)
    args.workdir.mkdir(parents=True, exist_ok=True)
    payloads = pl.payloads(kver, args.sizes)
    root = bl.make_real_root(args.workdir)
    results: list[report.Result] = []
    floor = None
    machine = None
    for i, p in enumerate(payloads):
        last = i == len(payloads) - 1
        rs, machine = measure_size(p, kver, root, args)
        results += rs
        if i == 0:
            bl.say("== kernel-only floor")
            floor = measure_floor(machine, args)
        if not last:  # the largest stays for the min-RAM probe
            shutil.rmtree(args.workdir / p.label, ignore_errors=True)
    assert machine is not None
    probes: list[minram.Probe] = []
    if not args.no_minram:
        bl.say(f"== minimum RAM for {payloads[-1].label}")
        probe_machine = bl.machine_from_args(kver, root, machine.disks[1].path, args)
        for r in results[-3:]:
            name = r.images.variant.name
            probes.append(minram.min_ram(probe_machine, r.images.initrd, name, args.workdir / "logs"))
    partial = {"results": [r.to_json() for r in results], "floor": floor}
    partial["minram"] = [x.to_json() for x in probes]
    # kept if what follows fails
    (args.workdir / "boots.json").write_text(json.dumps(partial, indent=1) + "\n")
    build_data = None
    if not args.no_build_bench:
        tree_payload = next((p for p in payloads if p.target >= 60_000_000), payloads[-1])
        tree = args.workdir / "writer-tree"
        shutil.rmtree(tree, ignore_errors=True)
        pl.materialize(tree_payload, tree)
        bdir = args.workdir / "buildbench"
        build_data = buildbench.run_all(kver, bdir, tree, tree_payload.size, args.build_reps)
    analysis = analyse(results, floor)
    summary = summary_lines(analysis, probes)
    data = {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": kver,
        "initbuild_commit": bl.source_revision(),
        "accel": machine.accel(),
        "machine": machine.machine_type,
        "memory_mb": args.memory,
        "boots": args.boots,
        "sizes_mb": args.sizes,
        "payloads": [p.to_json() for p in payloads],
        "results": [r.to_json() for r in results],
        "floor": floor,
        "analysis": analysis,
        "minram": [p.to_json() for p in probes],
        "build": build_data,
    }
    table = report.scaling_table(results)
    md = [table, "", *summary]
    if s1 := analysis.get("stage1"):
        title = f"Steps, initoverlayfs at {results[0].label} (first boot):"
        md += ["", steps_table(s1["steps"], title)]
    if ps := analysis.get("plain_steps_small"):
        md += ["", steps_table(ps, f"Steps, plain-lz4 at {results[0].label} (first boot):")]
    if build_data:
        md += ["", "Build times:", "", buildbench.table(build_data)]
    print("\n".join(md))
    write_outputs(args, data, results, "\n".join(md))
    if args.update_readme:
        block = readme_block(table, summary, data)
        series = kernel_series(kver)
        for f in (bl.REPO / "README.md", HERE / "README-section.md"):
            if f.exists() and report.update_readme(f, block, series):
                bl.say(f"updated the Linux {series} bench block in {f}")
            else:
                begin, end = report.readme_markers(series)
                bl.say(f"no {begin} ... {end} block in {f}: not updated")
    failed = [f"{r.label}/{r.images.variant.name}" for r in results if not r.all_ok]
    if failed or (floor and not floor["ok"]):
        bl.say(f"FAILED boots: {', '.join(failed) or 'floor'} (console logs in {args.workdir}/logs)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
