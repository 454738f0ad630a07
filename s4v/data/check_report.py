"""What `s4v data check` writes: report.json (everything), report.md, the skip list, three histograms and its printed
summary (the video index, `video_index.jsonl`, is `s4v.data.video_index`'s).

The JSON document is built first (`summarise`); the Markdown, the skip list and the plots are drawn from
it, so the files cannot disagree.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from s4v.data.official import compare, comparison_lines

# The reasons a video is bad, in the order the summaries show them.
BAD_REASONS = ("missing", "empty", "unreadable", "no video stream", "no frames")
MD_ROWS = 200  # rows of a listing in report.md; report.json holds them all
TOP_RESOLUTIONS = 20


def summarise(
    meta: dict[str, Any],
    records: dict[str, list[str]],
    videos: list[dict[str, Any]],
    unlisted: list[str],
    notes: list[str],
    speed: dict[str, Any],
    annotations: dict[str, dict[str, str]],
) -> dict[str, Any]:
    """The report document: `meta`, per-split counts (against the official ones) and annotation fingerprints
    (`annotations`), the bad and short videos, unlisted files, probe speed and every probe (`videos`, one dict
    per distinct path; `records`: each split's paths as annotated)."""
    by_path = {v["path"]: v for v in videos}
    splits_of: dict[str, list[str]] = defaultdict(list)
    summary = {}
    for split, paths in records.items():
        for path in dict.fromkeys(paths):
            splits_of[path].append(split)
        found = [by_path[p] for p in paths]
        bad = {reason: sum(v["reason"] == reason for v in found) for reason in BAD_REASONS}
        ok = len(paths) - sum(bad.values())
        summary[split] = {
            "videos": len(paths),
            "ok": ok,
            "bad": bad,
            "short": sum(_is_short(v, meta["num_frames"]) for v in found),
            "official": compare(meta["fmt"], split, len(paths), ok),
            "annotation": annotations[split],
        }
    n, wall, workers = len(videos), speed["wall_s"], speed["workers"]
    busy = sum(v["seconds"] for v in videos)
    return {
        **meta,
        "summary": summary,
        "bad": [{**_brief(v), "splits": splits_of[v["path"]]} for v in videos if v["reason"] is not None],
        "short": [
            {"path": v["path"], "frames": v["frames"], "splits": splits_of[v["path"]]}
            for v in videos
            if _is_short(v, meta["num_frames"])
        ],
        "unlisted": unlisted,
        "notes": notes,
        "probe": {
            "videos": n,
            "workers": workers,
            "wall_s": wall,
            "videos_per_s": n / wall if wall else 0.0,
            "videos_per_s_per_worker": n / wall / workers if wall else 0.0,
            "busy_videos_per_s": n / busy if busy else 0.0,  # one worker's rate while it probes
        },
        "videos": videos,
    }


def summary_lines(doc: dict[str, Any], files: list[Path]) -> list[str]:
    """What the check prints: each bad video as `path: reason`, then per split its counts and its count against
    the official one, unlisted files, notes, probe speed and the files written."""
    lines = [f"{bad['path']}: {bad['reason']}" for bad in doc["bad"]]
    for split, s in doc["summary"].items():
        bad = sum(s["bad"].values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in s["bad"].items() if n)
        line = f"{split}: {s['videos']} videos, {s['ok']} ok, {bad} bad" + (f" ({reasons})" if reasons else "")
        lines.append(line + (f", {s['short']} shorter than {doc['num_frames']} frames (warning)" if s["short"] else ""))
    lines += comparison_lines(doc)
    listing = " (see report.md)" if doc["unlisted"] else ""
    lines.append(f"unlisted: {len(doc['unlisted'])} video(s) under the root that no annotation lists{listing}")
    lines += [f"note: {note}" for note in doc["notes"]]
    p = doc["probe"]
    lines.append(
        f"probe: {p['videos']} videos in {p['wall_s']:.2f} s on {p['workers']} worker(s): "
        f"{p['videos_per_s']:.1f} videos/s, {p['videos_per_s_per_worker']:.1f} per worker "
        f"({p['busy_videos_per_s']:.1f} per busy worker-second)" + (", every frame decoded" if doc["full"] else "")
    )
    return [*lines, f"report: {', '.join(map(str, files))}"]


def _is_short(video: dict[str, Any], num_frames: int) -> bool:
    return video["reason"] is None and video["frames"] < num_frames


def _brief(video: dict[str, Any]) -> dict[str, Any]:
    return {"path": video["path"], "reason": video["reason"], "detail": video["detail"]}


def write_report(doc: dict[str, Any], out: Path) -> list[Path]:
    """report.json, report.md, skip_list.txt and the histograms in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json", out / "report.md", out / "skip_list.txt"]
    files[0].write_text(json.dumps(doc, indent=1))
    plots = write_histograms(doc["videos"], out)
    files[1].write_text(markdown(doc, [p.name for p in plots]))
    header = f"# s4v data check of {doc['root']} ({doc['fmt']}): {len(doc['bad'])} bad video(s), for data.skip_list\n"
    files[2].write_text(header + "".join(f"{b['path']}\n" for b in doc["bad"]))
    return files + plots


def _rows(items: list[Any], render: Any) -> list[str]:
    lines = [render(item) for item in items[:MD_ROWS]]
    if len(items) > MD_ROWS:
        lines.append(f"\n... and {len(items) - MD_ROWS} more (report.json)")
    return lines


def markdown(doc: dict[str, Any], plots: list[str]) -> str:
    mode = "every frame decoded (--full)" if doc["full"] else "first frames decoded"
    lines = [
        f"# Data check of `{doc['root']}`",
        "",
        f"Format `{doc['fmt']}`, splits {', '.join(doc['splits'])}, {mode}; "
        f"fewer than {doc['num_frames']} frames is a warning.",
        "",
        "| split | videos | ok | " + " | ".join(BAD_REASONS) + " | short (warning) |",
        "|---" * (4 + len(BAD_REASONS)) + "|",
    ]
    for split, s in doc["summary"].items():
        counts = " | ".join(str(s["bad"][r]) for r in BAD_REASONS)
        lines.append(f"| {split} | {s['videos']} | {s['ok']} | {counts} | {s['short']} |")
    lines += ["", "## Against the official split sizes", "", "| split | usable | official | difference | annotation |"]
    lines.append("|---|---:|---:|---:|---|")
    for split, s in doc["summary"].items():
        o, a = s["official"], s["annotation"]
        official, diff = (f"{o['videos']:,} ({o['source']})", f"{o['difference']:+,}") if o else ("none", "")
        lines.append(f"| {split} | {s['ok']:,} | {official} | {diff} | `{a['file']}` sha256 `{a['sha256']}` |")
    lines += ["", *[f"- {line}" for line in comparison_lines(doc)]]
    lines += ["", f"## Bad videos ({len(doc['bad'])})", ""]
    if doc["bad"]:
        lines += ["| path | reason | detail |", "|---|---|---|"]
        lines += _rows(doc["bad"], lambda b: f"| `{b['path']}` | {b['reason']} | {b['detail']} |")
    lines += ["", f"## Shorter than {doc['num_frames']} frames ({len(doc['short'])})", ""]
    lines += _rows(doc["short"], lambda s: f"- `{s['path']}`: {s['frames']} frames")
    lines += ["", f"## Unlisted: under the root, in no annotation ({len(doc['unlisted'])})", ""]
    lines += _rows(doc["unlisted"], lambda path: f"- `{path}`")
    lines += [f"\nNote: {note}" for note in doc["notes"]]
    p = doc["probe"]
    lines += [
        "",
        "## Probe speed",
        "",
        f"{p['videos']} videos in {p['wall_s']:.2f} s on {p['workers']} worker(s): {p['videos_per_s']:.1f} videos/s, "
        f"{p['videos_per_s_per_worker']:.1f} per worker ({p['busy_videos_per_s']:.1f} per busy worker-second).",
        "",
        "## Usable videos",
        "",
        *[f"![{Path(name).stem}]({name})" for name in plots],
        "",
    ]
    return "\n".join(lines)


def write_histograms(videos: list[dict[str, Any]], out: Path) -> list[Path]:
    """durations.png, frames.png, resolutions.png of the usable videos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = [v for v in videos if v["reason"] is None]
    sizes = Counter(f"{v['width']}x{v['height']}" for v in usable if v["width"])
    panels = [
        ("durations.png", "duration (s)", [v["duration"] for v in usable if v["duration"] is not None]),
        ("frames.png", "frames (video packets)", [v["frames"] for v in usable]),
        ("resolutions.png", "resolution (width x height)", sizes.most_common(TOP_RESOLUTIONS)),
    ]
    paths = []
    for name, label, values in panels:
        fig, ax = plt.subplots(figsize=(7, 4))
        if not values:
            ax.text(0.5, 0.5, "no usable video has this value", ha="center", va="center", transform=ax.transAxes)
        elif name == "resolutions.png":  # categories: the most common sizes, largest count first
            ax.barh([k for k, _ in values][::-1], [n for _, n in values][::-1])
            ax.set_ylabel(label)
            ax.set_xlabel("videos")
        else:
            ax.hist(values, bins=min(50, max(1, len(set(values)))))
            ax.set_xlabel(label)
            ax.set_ylabel("videos")
        ax.set_title(f"{label}: {len(usable)} usable videos")
        fig.tight_layout()
        fig.savefig(out / name, dpi=80)
        plt.close(fig)
        paths.append(out / name)
    return paths
