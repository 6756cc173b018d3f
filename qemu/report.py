"""Results of the qemu/ benchmarks as markdown tables, JSON, a hand-written SVG plot and a README block."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import benchlib as bl

MB = 1e6
MIB = 1 << 20


def readme_markers(series: str) -> tuple[str, str]:
    """The README block of one kernel series (e.g. "6.12"): each kernel has its own."""
    return f"<!-- bench:begin {series} -->", f"<!-- bench:end {series} -->"


@dataclass
class Result:
    """One variant at one payload size: what was built and what its boots measured."""

    label: str  # payload label, e.g. "250MB" or "default"
    payload_bytes: int
    images: bl.Images
    samples: list[bl.Sample] = field(default_factory=list)

    @cached_property
    def stats(self) -> dict[str, bl.Stat | None]:
        return bl.summarize(self.samples)

    @property
    def all_ok(self) -> bool:
        return bool(self.samples) and all(s.ok for s in self.samples)

    def median(self, metric: str) -> float | None:
        return bl.median_of(self.stats, metric)

    def to_json(self) -> dict[str, Any]:
        first_ok = next((s for s in self.samples if s.ok), None)
        return {
            "label": self.label,
            "payload_bytes": self.payload_bytes,
            **self.images.to_json(),
            "boots": len(self.samples),
            "ok": sum(s.ok for s in self.samples),
            "stats": bl.stats_json(self.stats),
            "samples": [s.to_json() for s in self.samples],
            "steps": [[t, msg] for t, msg in first_ok.steps] if first_ok else [],
        }


def fmt(v: float | None, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def fmt_stat(st: bl.Stat | None, nd: int = 3) -> str:
    if st is None:
        return "FAILED"
    if round(st.min, nd) == round(st.max, nd):
        return f"{st.median:.{nd}f}"
    return f"{st.median:.{nd}f} ({st.min:.{nd}f}-{st.max:.{nd}f})"


def mem_mib(r: Result, metric: str = "stage2_memavailable_kb") -> str:
    """Median MemAvailable in MiB: at stage two's start (default, the initramfs's userspace) or
    `memavailable_kb` (at the real root)."""
    v = r.median(metric)
    return "-" if v is None else f"{v / 1024:.0f}"


MEM_COLUMNS = "MemAvailable MiB, initramfs userspace (stage two start) | MemAvailable MiB, real root"


def mem_cells(r: Result) -> str:
    return f"{mem_mib(r)} | {mem_mib(r, 'memavailable_kb')}"


def comparison_table(results: Sequence[Result], machine: bl.Machine) -> str:
    """One row per variant of one payload; ratios are against the first row (initoverlayfs)."""
    head = (
        "| variant | initrd MB | stage 2 MB | Run /init (s) | stage two start (s) | "
        f"userspace (s) median (min-max) | vs initoverlayfs | {MEM_COLUMNS} | host s/boot |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    base = results[0].median("userspace") if results else None
    rows = [head]
    for r in results:
        t = r.median("userspace")
        ratio = f"{t / base:.2f}x" if t and base else "-"
        rows.append(
            f"| {r.images.variant.name} | {r.images.initrd_bytes / MB:.1f} | "
            f"{r.images.stage2_bytes / MB:.1f} | {fmt(r.median('run_init'))} | "
            f"{fmt(r.median('stage2_start'))} | {fmt_stat(r.stats.get('userspace'))} | {ratio} | "
            f"{mem_cells(r)} | {fmt(r.median('wall'), 1)} |"
        )
    note = (
        f"\n{len(results[0].samples) if results else 0} boots per variant, {machine.describe()}, "
        f"-m {machine.memory_mb}, 1 vCPU, virtio-pmem real root, initbuild {bl.source_revision()}; "
        "times are guest uptime. MemAvailable at stage two's start is what the initramfs pins while its "
        "userspace runs; at the real root a plain initramfs has already freed it."
    )
    return "\n".join(rows) + note


def scaling_table(results: Sequence[Result]) -> str:
    """All sizes and variants; the ratio column compares with initoverlayfs at the same size."""
    head = (
        "| payload MB | variant | initrd MB | stage 2 MB | Run /init (s) | stage two start (s) | "
        f"userspace (s) | vs initoverlayfs | {MEM_COLUMNS} | boots ok | host s/boot |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    base = {r.label: r.median("userspace") for r in results if r.images.variant.overlay}
    for r in results:
        t, b = r.median("userspace"), base.get(r.label)
        ratio = f"{t / b:.2f}x" if t and b else "-"
        rows.append(
            f"| {r.payload_bytes / MB:.0f} | {r.images.variant.name} | {r.images.initrd_bytes / MB:.1f} | "
            f"{r.images.stage2_bytes / MB:.1f} | {fmt(r.median('run_init'))} | "
            f"{fmt(r.median('stage2_start'))} | {fmt_stat(r.stats.get('userspace'))} | {ratio} | "
            f"{mem_cells(r)} | {sum(s.ok for s in r.samples)}/{len(r.samples)} | {fmt(r.median('wall'), 1)} |"
        )
    return "\n".join(rows)


def results_json(results: Sequence[Result], machine: bl.Machine, kver: str) -> dict[str, Any]:
    return {
        "kernel": kver,
        "initbuild_commit": bl.source_revision(),
        "accel": machine.accel(),
        "machine": machine.machine_type,
        "memory_mb": machine.memory_mb,
        "results": [r.to_json() for r in results],
    }


# -- SVG -------------------------------------------------------------------------------------------

COLORS = {"initoverlayfs": "#1f77b4", "plain-lz4": "#d62728", "plain-zstd": "#ff7f0e"}
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 460, 300, 62, 16, 34, 44


def _nice_max(v: float) -> float:
    """A round axis end at or above v."""
    if v <= 0:
        return 1.0
    mag = 10 ** (len(str(int(v))) - 1)
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * mag >= v:
            return m * mag
    return 10.0 * mag


def _panel(
    x0: int, title: str, ylabel: str, series: dict[str, list[tuple[float, float]]], ymin0: bool
) -> list[str]:
    """One chart: x = payload MB, one polyline per variant."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return []
    xmax = _nice_max(max(x for x, _ in pts))
    ys = [y for _, y in pts]
    ymax = _nice_max(max(ys) * 1.05)
    ymin = 0.0 if ymin0 else max(0.0, min(ys) - (max(ys) - min(ys)) * 0.15 - 1e-9)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(x: float) -> float:
        return x0 + PAD_L + x / xmax * pw

    def sy(y: float) -> float:
        return PAD_T + ph - (y - ymin) / (ymax - ymin) * ph

    out = [
        f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{x0 + PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for i in range(6):
        xv, yv = xmax * i / 5, ymin + (ymax - ymin) * i / 5
        out.append(f'<text x="{sx(xv):.1f}" y="{H - PAD_B + 16}" text-anchor="middle">{xv:g}</text>')
        out.append(f'<line x1="{x0 + PAD_L}" x2="{x0 + PAD_L + pw}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" '
                   'stroke="#eee"/>')  # fmt: skip
        out.append(f'<text x="{x0 + PAD_L - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.4g}</text>')
    xlabel = "payload (MB, uncompressed)"
    out.append(f'<text x="{x0 + PAD_L + pw / 2}" y="{H - 8}" text-anchor="middle">{xlabel}</text>')
    out.append(
        f'<text transform="translate({x0 + 14},{PAD_T + ph / 2}) rotate(-90)" text-anchor="middle">'
        f"{html.escape(ylabel)}</text>"
    )
    for name, s in series.items():
        c = COLORS.get(name, "#333")
        s = sorted(s)
        poly = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        out.append(f'<polyline points="{poly}" fill="none" stroke="{c}" stroke-width="2"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>' for x, y in s]
    return out


def svg_plot(results: Sequence[Result], subtitle: str = "") -> str:
    """Time to userspace and MemAvailable at stage two's start (the initramfs's userspace, where a plain
    initramfs still holds its content) against payload size, every variant on each chart."""
    t: dict[str, list[tuple[float, float]]] = {}
    m: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        x = r.payload_bytes / MB
        if (v := r.median("userspace")) is not None:
            t.setdefault(r.images.variant.name, []).append((x, v))
        if (v := r.median("stage2_memavailable_kb")) is not None:
            m.setdefault(r.images.variant.name, []).append((x, v / 1024))
    body = _panel(0, "time to real-root userspace", "guest seconds", t, ymin0=True)
    body += _panel(W, "MemAvailable at initramfs userspace", "MiB (stage two start)", m, ymin0=False)
    legend = []
    for i, name in enumerate(n for n in COLORS if n in t or n in m):
        lx = PAD_L + 10 + i * 150
        legend.append(f'<rect x="{lx}" y="{H + 6}" width="14" height="4" fill="{COLORS[name]}"/>')
        legend.append(f'<text x="{lx + 20}" y="{H + 12}">{name}</text>')
    if subtitle:
        sub = html.escape(subtitle)
        legend.append(f'<text x="{W}" y="{H + 30}" text-anchor="middle" fill="#555">{sub}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 40}" '
        f'font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n'
        + "\n".join(body + legend)
        + "\n</svg>\n"
    )


# -- README ----------------------------------------------------------------------------------------


def update_readme(readme: Path, block: str, series: str) -> bool:
    """Replace the text between the bench markers of `series`; False when the markers are missing."""
    begin, end = readme_markers(series)
    text = readme.read_text(encoding="utf-8")
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pat.search(text):
        return False
    new = pat.sub(lambda _m: f"{begin}\n{block.strip()}\n{end}", text, count=1)
    readme.write_text(new, encoding="utf-8")
    return True
