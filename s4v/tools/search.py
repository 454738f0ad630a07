"""Text-video retrieval with a trained checkpoint: `s4v embed` writes an index of videos, `s4v search` ranks the
indexed videos for texts, or the lines of a text file for one video.

An index holds what evaluation matches captions against: `encode_video`'s raw frame features averaged over
the evaluation views, (Nv, T, E) float32 (`s4v.train.retrieval.evaluate_retrieval`). Texts are tokenised by
the split's `CaptionTokens` and scored by the model's `similarity` through the same `blockwise_similarity`,
so the score of a (text, video) pair is the one evaluation ranks by.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from s4v.config import Config
from s4v.core.errors import UserError
from s4v.data.captions import CaptionSplit
from s4v.models.architectures import PRESETS
from s4v.tools.infer import add_model_arguments, batched, iter_views, load_from_args
from s4v.train.checkpoint import load_trainable
from s4v.train.retrieval import CaptionTokens, frame_embeddings, text_video_scores

# What `--videos DIR` picks up: the containers video collections come in (PyAV reads every one).
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv", ".3gp")


@torch.no_grad()
def scores(model: nn.Module, cfg: Config, texts: list[str], frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(texts, videos) similarities of `texts` against frame embeddings (Nv, T, E), as evaluation scores them."""
    tokens, _ = CaptionTokens(
        CaptionSplit([], [], [[t] for t in texts]),
        PRESETS[cfg.model.preset].tower.tokenizer,
        cfg.model.text_length,
        cfg.train.seed,
    ).all()
    return text_video_scores(model, tokens, frames, device)


def weights_digest(checkpoint: str | Path) -> str:
    """sha256 of a checkpoint's trainable state: an index only matches the weights that embedded it."""
    h = hashlib.sha256()
    for name, tensor in sorted(load_trainable(Path(checkpoint)).items()):
        h.update(name.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def video_list(spec: str) -> list[str]:
    """`--videos`: a folder (its video files, sorted) or a text file of paths, one per line ('#' comments)."""
    path = Path(spec)
    if path.is_dir():
        paths = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    elif path.is_file():
        lines = [line.strip() for line in path.read_text().splitlines()]
        paths = [line for line in lines if line and not line.startswith("#")]
    else:
        raise UserError(f"--videos {spec!r}: no such file or directory")
    if not paths:
        raise UserError(f"--videos {spec!r}: no video in it (files ending in {', '.join(VIDEO_SUFFIXES)})")
    return paths


@dataclass
class Index:
    embeddings: torch.Tensor  # (Nv, T, E) float32
    ids: list[str]
    paths: list[str]
    views: str
    digest: str


def write_index(path: Path, index: Index) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "embeddings": index.embeddings.numpy(),
        "ids": np.array(index.ids),
        "paths": np.array(index.paths),
        "views": np.array(index.views),
        "weights_sha256": np.array(index.digest),
    }
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to another name
        np.savez(f, **arrays)


def read_index(path: str) -> Index:
    try:
        with np.load(path) as z:
            return Index(
                torch.from_numpy(z["embeddings"]),
                [str(s) for s in z["ids"]],
                [str(s) for s in z["paths"]],
                str(z["views"]),
                str(z["weights_sha256"]),
            )
    except FileNotFoundError:
        raise UserError(f"--index {path!r}: no such file") from None
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--index {path!r}: not an index written by `s4v embed` ({e})") from None


def embed_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="s4v embed",
        description="Write the frame embeddings of videos (averaged over views, as evaluation) to an index for "
        "`s4v search`. Exit code 1 when some videos could not be read (the others are indexed).",
    )
    add_model_arguments(p)
    p.add_argument("--videos", required=True, help="a folder (its video files) or a text file, one path per line")
    p.add_argument("--out", required=True, help="index file to write (npz)")
    p.add_argument("--views", default="1x1", help="CROPSxCLIPS, e.g. 3x2 (crops: 1 or 3)")
    args = p.parse_args(argv)
    paths = video_list(args.videos)
    run = load_from_args(args, "retrieval", args.views)
    failed: list[tuple[str, str]] = []
    kept, embeddings = [], []
    for batch_paths, video in batched(iter_views(paths, run.cfg.data, failed), run.batch_size):
        kept += batch_paths
        embeddings.append(frame_embeddings(run.model, video, run.device, run.dtype).cpu())
    if not kept:
        raise UserError(f"none of the {len(paths)} video(s) could be read; no index written")
    stems = [Path(v).stem for v in kept]
    ids = stems if len(set(stems)) == len(stems) else kept  # file stems unless two files share one
    index = Index(torch.cat(embeddings), ids, kept, args.views, weights_digest(args.checkpoint))
    write_index(Path(args.out), index)
    print(f"[s4v] {args.out}: {len(kept)} video(s) x {tuple(index.embeddings.shape[1:])} ({len(failed)} failed)")
    return 1 if failed else 0


def _ranked(values: torch.Tensor, k: int) -> list[int]:
    return np.argsort(-values.numpy(), kind="stable")[:k].tolist()


def _search_index(args: argparse.Namespace) -> dict[str, Any]:
    index = read_index(args.index)
    run = load_from_args(args, "retrieval", index.views)
    if weights_digest(args.checkpoint) != index.digest:
        raise UserError(f"--index {args.index!r} was embedded with other weights; run `s4v embed` with this checkpoint")
    sim = scores(run.model, run.cfg, args.texts, index.embeddings, run.device)
    queries = []
    for text, row in zip(args.texts, sim, strict=True):
        hits = [{"id": index.ids[j], "path": index.paths[j], "score": float(row[j])} for j in _ranked(row, args.top)]
        queries.append({"text": text, "results": hits})
        if not args.json:
            print("\n".join([repr(text)] + [_row(r, h["score"], h["id"]) for r, h in enumerate(hits, 1)]))
    return {"checkpoint": args.checkpoint, "index": args.index, "queries": queries}


def _search_video(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    try:
        numbered = [(n, line.strip()) for n, line in enumerate(Path(args.text_file).read_text().splitlines(), 1)]
    except OSError as e:
        raise UserError(f"--texts {args.text_file!r}: {e.strerror}") from None
    numbered = [(n, text) for n, text in numbered if text]
    if not numbered:
        raise UserError(f"--texts {args.text_file!r}: no text in it")
    run = load_from_args(args, "retrieval", args.views or "1x1")
    failed: list[tuple[str, str]] = []
    views = [v for _, v in iter_views([args.video], run.cfg.data, failed)]
    doc: dict[str, Any] = {"checkpoint": args.checkpoint, "video": args.video, "results": []}
    if failed:
        return doc | {"error": failed[0][1]}, False
    frames = frame_embeddings(run.model, views[0][None], run.device, run.dtype).cpu()
    sim = scores(run.model, run.cfg, [t for _, t in numbered], frames, run.device)[:, 0]
    hits = [{"line": numbered[i][0], "text": numbered[i][1], "score": float(sim[i])} for i in _ranked(sim, args.top)]
    if not args.json:
        print("\n".join([args.video] + [_row(r, h["score"], h["text"]) for r, h in enumerate(hits, 1)]))
    return doc | {"results": hits}, True


def _row(rank: int, score: float, name: str) -> str:
    return f"  {rank:>3}  {score:8.4f}  {name}"


def search_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="s4v search",
        description="Rank indexed videos for texts (--index INDEX TEXT...) or a file's lines for one video "
        "(--video FILE --texts FILE), by the model's similarity as evaluation computes it.",
    )
    add_model_arguments(p)
    p.add_argument("texts", nargs="*", metavar="TEXT", help="with --index: queries, each ranked over the index")
    p.add_argument("--index", help="index written by `s4v embed`")
    p.add_argument("--video", help="one video file, whose best --texts lines are shown")
    p.add_argument("--texts", dest="text_file", metavar="FILE", help="with --video: candidate texts, one per line")
    p.add_argument("--views", default=None, help="with --video: CROPSxCLIPS (default 1x1); an index keeps its own")
    p.add_argument("--top", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    args = p.parse_args(argv)
    if args.top < 1:
        raise UserError(f"--top {args.top}: must be at least 1")
    by_index = args.index is not None and args.texts and args.video is None and args.text_file is None
    by_video = args.video is not None and args.text_file is not None and args.index is None and not args.texts
    if not (by_index or by_video):
        raise UserError("give either --index INDEX TEXT [TEXT ...] or --video FILE --texts FILE")
    if by_index and args.views is not None:
        raise UserError("--views applies to --video; an index keeps the views it was embedded with")
    doc, ok = (_search_index(args), True) if by_index else _search_video(args)
    if args.json:
        print(json.dumps(doc, indent=2))
    return 0 if ok else 1
