"""Tables, goals, plot and README block of qemu/realroot.py (the real-Debian boot benchmark).

Works on the per-variant summaries realroot.py writes into results.json, so a saved results.json can
be re-rendered without booting again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import benchlib as bl

from initbuild.boot import debroot as dr


def cell(st: dict[str, float] | None, nd: int = 3) -> str:
    if not st:
        return "-"
    if round(st["min"], nd) == round(st["max"], nd):
        return f"{st['median']:.{nd}f}"
    return f"{st['median']:.{nd}f} ({st['min']:.{nd}f}-{st['max']:.{nd}f})"


def med(s: dict[str, Any], key: str) -> float | None:
    st = s["stats"].get(key)
    return st["median"] if st else None


def table(sums: list[dict[str, Any]]) -> str:
    rows = [
        "| initrd | size MB | build s | `Run /init` s | switch to real root s (median, range) | spread ms | "
        "multi-user s | systemd-analyze kernel + initrd + userspace s | "
        "MemAvailable MiB switch / multi-user | "
        "failed units | clean power-off | blockdev / module / loop warnings |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sums:
        size = f"{s['initrd_bytes'] / 1e6:.2f}" + (
            f" + {s['stage2_bytes'] / 1e6:.2f}" if s["stage2_bytes"] else ""
        )
        a = [med(s, f"analyze_{k}") for k in ("kernel", "initrd", "userspace")]
        an = " + ".join("-" if x is None else f"{x:.2f}" for x in a)
        mem = " / ".join(
            "-" if (x := med(s, k)) is None else f"{x:.0f}" for k in ("switch_mem_mib", "multi_user_mem_mib")
        )
        w = " / ".join(str(s["warnings_max"][k]) for k in dr.WARNINGS)
        spread = "-" if s["switch_spread_ms"] is None else f"{s['switch_spread_ms']:.1f}"
        rows.append(
            f"| {s['title']} | {size} | {s['build_seconds']:.1f} | {cell(s['stats']['run_init'])} | "
            f"{cell(s['stats']['switch'])} | {spread} | {cell(s['stats']['multi_user'])} | {an} | {mem} | "
            f"{s['failed_units_max']} | {s['clean_shutdown']}/{s['boots']} | {w} |"
        )
    return "\n".join(rows)


def goals(sums: list[dict[str, Any]]) -> list[str]:
    """The issue's acceptance goals 2-3, from this run."""
    by = {s["variant"]: s for s in sums}
    out = []

    def ms(st: dict[str, float] | None) -> str:
        return "-" if not st else f"{(st['max'] - st['min']) * 1000:.1f}"

    spreads = [f"{s['variant']} {ms(s['stats']['switch'])} / {ms(s['stats']['multi_user'])}" for s in sums]
    out.append(
        "- Spread across identical boots, ms, switch / multi-user (goal: within 5 ms at the switch): "
        + ", ".join(spreads)
    )
    peers = [by[n] for n in ("initramfs-tools", "dracut") if n in by and med(by[n], "switch")]
    ovl = by.get("ovl-systemd")
    if peers and ovl and med(ovl, "switch"):
        fast = min(peers, key=lambda s: med(s, "switch"))  # type: ignore[arg-type,return-value]
        r = med(ovl, "switch") / med(fast, "switch")  # type: ignore[operator]
        out.append(
            f"- Switch to the real root, initoverlayfs+systemd vs {fast['variant']}: {r:.2f}x (goal <= 0.6x)"
        )
        mu = [(p["variant"], med(p, "multi_user")) for p in peers]
        mine = med(ovl, "multi_user")
        out.append(
            "- multi-user.target: ovl-systemd "
            + (f"{mine:.3f} s" if mine else "-")
            + "; "
            + ", ".join(f"{n} {x:.3f} s" for n, x in mu if x)
            + " (goal: no later than either)"
        )
        fastb = min(p["build_seconds"] for p in peers)
        out.append(
            f"- Build time: ovl-systemd {ovl['build_seconds']:.1f} s = {ovl['build_seconds'] / fastb:.2f}x "
            f"the faster peer's {fastb:.1f} s (goal <= 0.2x)"
        )
    for s in sums:
        if s["notes"]:
            out.append(f"- {s['variant']}: " + "; ".join(s["notes"]))
        if s["failed"]:
            out.append(f"- {s['variant']}: failed units: {', '.join(s['failed'])}")
    return out


COLORS = ("#7f7f7f", "#1f77b4", "#2ca02c")


def svg(sums: list[dict[str, Any]], subtitle: str) -> str:
    """Stacked bars per variant: kernel (to Run /init), initrd (to the switch), real root (to multi-user)."""
    W, row, left, top = 760, 34, 250, 40
    h = top + row * len(sums) + 60
    ends = [med(s, "multi_user") or 0 for s in sums]
    xmax = max(ends + [1.0])
    xmax = float(int(xmax) + 1)
    scale = (W - left - 30) / xmax
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" '
        'font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{W / 2}" y="18" text-anchor="middle" font-weight="bold">Debian bookworm: power-on to '
        "multi-user.target (median guest seconds)</text>",
    ]
    for i in range(int(xmax) + 1):
        x = left + i * scale
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 6}" y2="{h - 50}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{h - 38}" text-anchor="middle">{i}</text>')
    for j, s in enumerate(sums):
        y = top + j * row
        pts = [0.0] + [med(s, k) or 0.0 for k in ("run_init", "switch", "multi_user")]
        out.append(f'<text x="{left - 6}" y="{y + 16}" text-anchor="end">{s["variant"]}</text>')
        for k in range(3):
            a, b = pts[k], max(pts[k], pts[k + 1])
            out.append(
                f'<rect x="{left + a * scale:.1f}" y="{y + 4}" width="{(b - a) * scale:.1f}" '
                f'height="{row - 10}" '
                f'fill="{COLORS[k]}"/>'
            )
        if pts[3]:
            out.append(f'<text x="{left + pts[3] * scale + 4:.1f}" y="{y + 16}">{pts[3]:.2f}</text>')
    for k, name in enumerate(
        ("kernel (to Run /init)", "initrd (to the real root's systemd)", "real root (to multi-user)")
    ):
        lx = left + k * 170
        out.append(f'<rect x="{lx}" y="{h - 26}" width="12" height="8" fill="{COLORS[k]}"/>')
        out.append(f'<text x="{lx + 16}" y="{h - 18}">{name}</text>')
    out.append(f'<text x="{W / 2}" y="{h - 4}" text-anchor="middle" fill="#555">{subtitle}</text>')
    return "\n".join(out) + "\n</svg>\n"


def update_readme(block: str, series: str) -> bool:
    readme = bl.REPO / "README.md"
    begin, end = f"<!-- realroot:begin {series} -->", f"<!-- realroot:end {series} -->"
    text = readme.read_text(encoding="utf-8")
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pat.search(text):
        return False
    readme.write_text(pat.sub(lambda _m: f"{begin}\n{block.strip()}\n{end}", text, count=1), encoding="utf-8")
    return True


def render(data: dict[str, Any], out: Path, readme_series: str | None) -> str:
    """table.md and plot.svg from results.json's data (and README's block of `readme_series`)."""
    sums = data["variants"]
    note = (
        f"{data['boots']} boot(s) per variant, Debian bookworm ({data['kernel']}, packages: "
        f"{', '.join(data['packages'])} + the generator), {data['accel']}, machine pc, 2 GiB, 1 vCPU, "
        f"root disk {data.get('disk', 'nvdimm')}, command line `{data['append']}`; initbuild "
        f"{data['initbuild_commit']}. Times are guest seconds since power-on (printk); build s: median of "
        "wall-clock builds on a shared 2-core machine. systemd-analyze's initrd is `-` where no systemd "
        "runs in the initrd: its kernel time then includes the initrd."
    )
    md = table(sums) + "\n\n" + note + "\n\n" + "\n".join(goals(sums)) + "\n"
    (out / "table.md").write_text(md)
    (out / "plot.svg").write_text(
        svg(sums, f"{data['kernel']}, {data['accel']}, initbuild {data['initbuild_commit']}")
    )
    if readme_series:
        cmd = f"Reproduce: `.venv/bin/python qemu/realroot.py --kernel {readme_series}"
        cmd += f" --boots {data['boots']}"
        cmd += " --update-readme` (all numbers: results.json next to the plot)."
        plot = f"![boot phases](qemu/results/realroot/{readme_series}/plot.svg)"
        if not update_readme(f"{cmd}\n\n{md}\n{plot}\n", readme_series):
            bl.say(f"README.md has no realroot markers for {readme_series}: not updated")
    return md
