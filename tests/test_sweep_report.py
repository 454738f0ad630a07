"""The sweep report names the best member that did not fail (by `best`, either direction), has one table row
per member with its swept values and failure, writes a real PNG down the right plot branch, and never puts
NaN or Infinity in sweep.json."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from s4v.train import sweep_report
from s4v.train.sweep_report import write_sweep_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _row(name: str, overrides: dict[str, Any], best: float | None, failed: bool = False, **kw: Any) -> dict[str, Any]:
    row = {
        "name": name,
        "overrides": overrides,
        "trainable_params": 1234567,
        "last": best,
        "best": best,
        "best_epoch": None if best is None else 2,
        "failed": failed,
        "failure": "non-finite loss at step 7" if failed else None,
        "steps": 7 if failed else 40,
        "export": None if failed else f"{name}/final",
    }
    return {**row, **kw}


@pytest.fixture
def lr_rows() -> list[dict[str, Any]]:
    """Four learning rates: 1e-3 is best, 1e-4 worst, 3e-2 diverged before its first evaluation."""
    return [
        _row("lr=0.0001", {"optim.lr": 0.0001}, 0.5, last=0.45),
        _row("lr=0.0003", {"optim.lr": 0.0003}, 0.75),
        _row("lr=0.001", {"optim.lr": 0.001}, 0.875, best_epoch=3),
        _row("lr=0.03", {"optim.lr": 0.03}, None, failed=True),
    ]


def _strict_json(path: Path) -> dict[str, Any]:
    """Python's json accepts NaN and Infinity; a strict reader (JavaScript, jq) does not."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in {path.name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _table_rows(md: str) -> list[str]:
    """The body rows of the markdown table (no header, no separator)."""
    return [line for line in md.splitlines() if line.startswith("| ")][1:]


def test_json_round_trips_and_names_best(tmp_path: Path, lr_rows: list[dict[str, Any]]) -> None:
    before = copy.deepcopy(lr_rows)
    js, md, png = write_sweep_report(tmp_path, lr_rows, "top1")
    assert (js, md, png) == (tmp_path / "sweep.json", tmp_path / "sweep.md", tmp_path / "sweep.png")
    doc = _strict_json(js)
    assert doc == {
        "metric": "top1",
        "higher_is_better": True,
        "best_member": "lr=0.001",
        "members": lr_rows,
        "halving": None,
    }
    assert lr_rows == before  # the caller's rows are not cleaned in place
    # Atomic writes leave no temp file behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json", "sweep.md", "sweep.png"]


def test_lower_is_better_picks_the_other_end(tmp_path: Path, lr_rows: list[dict[str, Any]]) -> None:
    js, _, _ = write_sweep_report(tmp_path, lr_rows, "top1", higher_is_better=False)
    doc = _strict_json(js)
    # The failed member's best=None must not count as the lowest value.
    assert (doc["best_member"], doc["higher_is_better"]) == ("lr=0.0001", False)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_failed_member_never_wins(tmp_path: Path, higher_is_better: bool) -> None:
    """Even with a best that beats everyone (evaluated, then diverged), a failed member is not the best."""
    rows = [
        _row("a", {"optim.lr": 0.1}, 0.6),
        _row("b", {"optim.lr": 0.2}, 0.99 if higher_is_better else 0.01, failed=True),
        _row("c", {"optim.lr": 0.3}, None, failed=True),
    ]
    js, _, _ = write_sweep_report(tmp_path, rows, "top1", higher_is_better)
    assert _strict_json(js)["best_member"] == "a"


def test_all_failed_has_no_best(tmp_path: Path) -> None:
    rows = [_row("a", {"optim.lr": 0.1}, None, failed=True), _row("b", {"optim.lr": 0.2}, 0.3, failed=True)]
    js, md, png = write_sweep_report(tmp_path, rows, "top1")
    assert _strict_json(js)["best_member"] is None
    assert "No best member" in md.read_text()
    assert png is not None and png.read_bytes().startswith(PNG_SIGNATURE)


def test_markdown_table(tmp_path: Path, lr_rows: list[dict[str, Any]]) -> None:
    _, md, _ = write_sweep_report(tmp_path, lr_rows, "top1")
    text = md.read_text()
    header = [line for line in text.splitlines() if line.startswith("| ")][0]
    assert header == ("| member | optim.lr | trainable params | last top1 | best top1 (epoch) | status | export |")
    rows = _table_rows(text)
    assert len(rows) == 4
    for row, lr in zip(rows, ["0.0001", "0.0003", "0.001", "0.03"], strict=True):
        assert row.split(" | ")[1] == lr
    assert rows[0] == "| lr=0.0001 | 0.0001 | 1,234,567 | 45.00% | 50.00% (2) | ok | `lr=0.0001/final` |"
    assert rows[2].startswith("| **lr=0.001** |") and "87.50% (3)" in rows[2]
    assert sum("**" in row for row in rows) == 1
    assert "| failed: non-finite loss at step 7 | – |" in rows[3]
    assert "Best member (best top1, higher is better): **lr=0.001**, 87.50% at epoch 3." in text
    assert "![sweep](sweep.png)" in text


def test_png_is_a_log_scaled_line_plot(
    tmp_path: Path, lr_rows: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    scales = _spy_branches(monkeypatch)
    _, _, png = write_sweep_report(tmp_path, lr_rows, "top1")
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1024
    assert scales == [("lines", "log")]  # 0.03 / 0.0001 = 300 > 20


def test_narrow_range_stays_linear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scales = _spy_branches(monkeypatch)
    rows = [_row(f"d={d}", {"model.side_dim": d}, 0.5 + d / 1000) for d in (64, 128, 256)]
    write_sweep_report(tmp_path, rows, "top1")
    assert scales == [("lines", "linear")]


def test_two_keys_make_a_bar_chart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scales = _spy_branches(monkeypatch)
    rows = [
        _row("side_dim=128,lr=0.001", {"model.side_dim": 128, "optim.lr": 0.001}, 0.8),
        _row("side_dim=256,lr=1", {"model.side_dim": 256, "optim.lr": 1.0}, 0.85),
        _row("side_dim=256", {"model.side_dim": 256}, None, failed=True),
    ]
    js, md, png = write_sweep_report(tmp_path, rows, "t2v_R@1")
    assert scales == [("bars", "linear")]
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1024
    assert _strict_json(js)["best_member"] == "side_dim=256,lr=1"
    text = md.read_text()
    assert "| member | model.side_dim | optim.lr | trainable params | last t2v_R@1 |" in text
    rows = _table_rows(text)
    assert rows[1].startswith("| **side_dim=256,lr=1** | 256 | 1 | 1,234,567 |")  # 1.0 with :g
    assert rows[2].startswith("| side_dim=256 | 256 | – | 1,234,567 |")  # no lr: an empty cell


def _spy_branches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record which plot branch ran and the x scale it left (the real drawing still happens)."""
    calls: list[tuple[str, str]] = []
    for branch in ("lines", "bars"):
        real = getattr(sweep_report, f"_plot_{branch}")

        def spy(ax: Any, *args: Any, _real: Any = real, _branch: str = branch) -> None:
            _real(ax, *args)
            calls.append((_branch, ax.get_xscale()))

        monkeypatch.setattr(sweep_report, f"_plot_{branch}", spy)
    return calls


def test_non_finite_floats_become_null(tmp_path: Path) -> None:
    rows = [
        _row("lr=0.001", {"optim.lr": 0.001}, 0.7, last=math.nan),
        _row("lr=0.01", {"optim.lr": 0.01}, math.inf, best_epoch=1, last=-math.inf),
    ]
    js, md, _ = write_sweep_report(tmp_path, rows, "top1")
    text = js.read_text()
    assert "NaN" not in text and "Infinity" not in text
    members = _strict_json(js)["members"]
    assert members[0]["last"] is None and members[0]["best"] == 0.7
    assert members[1]["last"] is None and members[1]["best"] is None
    # An infinite best is no score: the finite member wins.
    assert _strict_json(js)["best_member"] == "lr=0.001"
    assert "nan" not in md.read_text().lower()


def test_no_rows_no_plot(tmp_path: Path) -> None:
    js, md, png = write_sweep_report(tmp_path / "new", [], "top1")
    assert png is None and not (tmp_path / "new" / "sweep.png").exists()
    assert _strict_json(js) == {
        "metric": "top1",
        "higher_is_better": True,
        "best_member": None,
        "members": [],
        "halving": None,
    }
    assert _table_rows(md.read_text()) == []
