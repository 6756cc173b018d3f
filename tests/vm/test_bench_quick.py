"""The qemu/ benchmark in its CI form (`qemu/bench.py --quick`): one payload size, one boot per variant.

Checks that every variant (initoverlayfs, plain lz4, plain zstd) and the kernel-only floor reached their
marker on the shared machine, and that the table, JSON, SVG and markdown outputs were produced with real
numbers. No assertion depends on speed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from initbuild.run import run

pytestmark = pytest.mark.vm

BENCH = Path(__file__).resolve().parents[2] / "qemu" / "bench.py"
VARIANTS = ("initoverlayfs", "plain-lz4", "plain-zstd")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, kver: str) -> tuple[str, Path]:
    work = tmp_path_factory.mktemp("bench")
    argv = [
        sys.executable,
        str(BENCH),
        "--quick",
        "--kver",
        kver,
        "--workdir",
        work,
        "--out",
        work / "results",
    ]
    cp = run(argv, check=False)
    out, err = cp.stdout.decode(), cp.stderr.decode()
    assert cp.returncode == 0, f"bench.py --quick failed ({cp.returncode}):\n{err[-4000:]}\n{out[-2000:]}"
    return out, work / "results"


def test_every_variant_reached_the_real_root(quick: tuple[str, Path]) -> None:
    data = json.loads((quick[1] / "latest.json").read_text())
    got = {r["variant"]: r for r in data["results"]}
    assert sorted(got) == sorted(VARIANTS)
    for name, r in got.items():
        assert r["boots"] == 1 and r["ok"] == 1, (name, r["samples"])
        s = r["samples"][0]
        assert isinstance(s["userspace"], float) and s["userspace"] > 0, (name, s)
        assert isinstance(s["run_init"], float) and 0 < s["run_init"] < s["userspace"], (name, s)
        assert s["stage2_start"] is not None, (name, s)
        assert s["run_init"] <= s["stage2_start"] <= s["userspace"], (name, s)
        assert isinstance(s["memavailable_kb"], int) and s["memavailable_kb"] > 0, (name, s)
        # initbuild.marker=1: stage two reported itself (time, MemAvailable) before the real root did
        assert isinstance(s["stage2_memavailable_kb"], int) and s["stage2_memavailable_kb"] > 0, (name, s)
        assert s["stage2_start"] <= s["stage2_marker"] <= s["userspace"], (name, s)
        assert r["initrd_bytes"] > 0
    assert got["initoverlayfs"]["stage2_bytes"] > 0 and got["plain-lz4"]["stage2_bytes"] == 0
    # the overlay variant went through both stages, the plain ones through stage two only
    ov_steps = [m for _, m in got["initoverlayfs"]["steps"]]
    assert any(m.startswith("stage one started") for m in ov_steps)
    assert any(m.startswith("stage two started over initoverlayfs") for m in ov_steps)
    assert any(m.startswith("stage two started (plain initramfs)") for _, m in got["plain-lz4"]["steps"])


def test_floor_and_payload_reported(quick: tuple[str, Path]) -> None:
    data = json.loads((quick[1] / "latest.json").read_text())
    assert data["floor"]["ok"] == 1 and data["floor"]["run_init"] > 0
    (p,) = data["payloads"]
    assert p["bytes"] >= p["target"] > 0
    assert all(r["payload_bytes"] == p["bytes"] for r in data["results"])
    assert data["initbuild_commit"] not in ("", "unknown"), data["initbuild_commit"]
    assert set(data["analysis"]["memory"]) == {"stage_two", "real_root"}


def test_table_and_plot_written(quick: tuple[str, Path]) -> None:
    out, results = quick
    rows = [line for line in out.splitlines() if line.startswith("| ") and "variant" not in line]
    assert {v for v in VARIANTS if any(f"| {v} |" in r for r in rows)} == set(VARIANTS), out
    assert "MemAvailable MiB, initramfs userspace (stage two start)" in out and "real root |" in out, out
    svg = (results / "latest.svg").read_text()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert svg.count("<polyline") == 2 * len(VARIANTS)  # both charts, every variant
    assert "| plain-zstd |" in (results / "latest.md").read_text()


def test_compare_a_users_profile_on_q35(tmp_path: Path, kver: str) -> None:
    """qemu/compare.py --profile: the user's profile (zstd stage one, the udev module) built both ways
    and booted on the q35 machine; both reach the real root, and stage two ran udev."""
    profile = tmp_path / "mine.yaml"
    profile.write_text("compression: zstd\nmodules: [udev]\n")
    out = tmp_path / "compare.json"
    argv = [
        sys.executable, str(BENCH.parent / "compare.py"), "--profile", profile, "--boots", "1",
        "--kver", kver, "--machine", "q35", "--workdir", tmp_path / "work", "--json", out,
    ]  # fmt: skip
    cp = run(argv, check=False)
    assert cp.returncode == 0, cp.stderr.decode()[-4000:] + cp.stdout.decode()[-2000:]
    data = json.loads(out.read_text())
    assert data["machine"] == "q35"
    got = {r["variant"]: r for r in data["results"]}
    assert sorted(got) == ["initoverlayfs", "plain-zstd"]
    assert all(r["ok"] == 1 for r in got.values()), got
    for name, r in got.items():
        assert any(m.startswith("udev settled") for _, m in r["steps"]), (name, r["steps"])


def test_compare_rejects_a_bad_profile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("compresion: zstd\n")
    cp = run([sys.executable, str(BENCH.parent / "compare.py"), "--profile", bad], check=False)
    err = cp.stderr.decode()
    assert cp.returncode == 2 and "bad.yaml:1" in err and "compression" in err and "Traceback" not in err, err
