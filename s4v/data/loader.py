"""Epoch iteration: one global order per epoch dealt over the ranks, exact resume, bad-video accounting.

Which videos a batch holds and how each is sampled and augmented is decided here, in the same way for
both decoders: `pyav` (FFmpeg through PyAV in torch DataLoader worker processes; every codec, CPU) and
`dali` (DALI's decoder: NVDEC on GPU, libavcodec threads on CPU for VP8/VP9/MJPEG). Each sample draws
from `np.random.default_rng([seed, epoch, video_index])`, so a batch does not depend on the worker,
the backend's scheduling or the resume point.
"""

from __future__ import annotations

import gc
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from s4v.core.errors import UserError
from s4v.core.preemption import ignore_stop_signals
from s4v.data.annotations import read_carved, read_split
from s4v.data.backend import resolve_backend
from s4v.data.captions import CaptionSplit
from s4v.data.config import DataConfig
from s4v.data.decode import BadVideo, decode_frames
from s4v.data.prepare import Prepared, finish, prepare
from s4v.data.records import VideoRecord
from s4v.data.video_index import load_video_index

log = logging.getLogger("s4v.data")


class BadVideoError(RuntimeError):
    """More bad videos in one epoch than `DataConfig.max_bad_videos`."""


def _stack(videos: list[torch.Tensor], train: bool) -> torch.Tensor | None:
    """`finish`'s outputs -> one batch tensor, as `DaliClips.result` lays it out. Training: (B x R, T, 3, S, S),
    the R clips of a video adjacent (video 0 clip 0, video 0 clip 1, video 1 clip 0, ...) as the reference's
    `multiple_samples_collate` flattens each video's clip list; test: (B, V, T, 3, S, S), or (B, T, 3, S, S)
    for a single view (the training layout)."""
    if not videos:
        return None
    if train:
        return torch.cat(videos)
    video = torch.stack(videos)
    return video[:, 0] if video.shape[1] == 1 else video


def _collate(
    video: torch.Tensor | None, preps: list[Prepared], bad: list[tuple[str, str]], cfg: DataConfig, train: bool
) -> dict[str, object]:
    """A batch: the clips with labels and indices repeated to match the R clips of each training video."""
    repeats = cfg.num_repeats if train else 1
    return {
        "video": video,
        "label": torch.tensor([p.record.label for p in preps], dtype=torch.long).repeat_interleave(repeats),
        "index": torch.tensor([p.index for p in preps], dtype=torch.long).repeat_interleave(repeats),
        "bad": bad,
    }


class _PyAVBatches(torch.utils.data.Dataset):
    """Item b = the whole batch b, decoded and augmented in a worker process."""

    def __init__(self, loader: VideoLoader, batches: list[np.ndarray]) -> None:
        self.cfg, self.records, self.train = loader.cfg, loader.records, loader.train
        self.seed, self.epoch, self.batches = loader.seed, loader.epoch, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> dict:
        videos, preps, bad = [], [], []
        for i in self.batches[b]:
            rec = self.records[i]
            try:
                p = prepare(int(i), rec, self.cfg, self.train, self.seed, self.epoch)
                frames = torch.from_numpy(decode_frames(rec.path, p.frames, p.data, p.video))
                videos.append(finish(p, frames, self.cfg, self.train))
                preps.append(p)
            except Exception as e:  # any per-video failure is a bad video, never a dead run
                bad.append((rec.path, e.reason if isinstance(e, BadVideo) else f"corrupt ({e!r})"))
        for p in preps:
            p.data = None  # do not ship the encoded bytes back to the main process
        return _collate(_stack(videos, self.train), preps, bad, self.cfg, self.train)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one process per core: intra-op threads would oversubscribe
    ignore_stop_signals()  # the rank decides when to stop (s4v/core/preemption.py)


def _rng_isolated(batches: Iterator[dict]) -> Iterator[dict]:
    """Pull batches without touching the global torch RNG: torch's DataLoader draws a base seed from it
    when an iterator starts, which would shift the trainer's dropout masks after a mid-epoch resume."""
    while True:
        with torch.random.fork_rng(devices=[]):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


class VideoLoader:
    """Iterable of batches {"video", "label", "index"} for one split on one rank (see module doc).

    Splits: "train"; "val"; "heldout", the training videos that `data.heldout_fraction` or
    `data.heldout_list` keep out of "train" (`s4v.data.heldout`), read as "val" is (file order, test
    views). `index` is the video's position in the split (for "train", in the carved split); `label` its
    class (for the retrieval formats, where each video is its own class, the two coincide). `captions`
    holds the split's captions when the format has them, so a retrieval task does not read the annotation
    files a second time. `heldout`: on a carved "train", the held-out records (else None).
    """

    def __init__(self, cfg: DataConfig, split: str, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if split not in ("train", "val", "heldout"):
            raise ValueError(f"split must be train|val|heldout, got {split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.cfg, self.split, self.train = cfg, split, split == "train"
        self.rank, self.world_size, self.seed = rank, world_size, seed
        # The carve comes first: "train"'s order, batches and resume positions all count the carved split.
        loaded = read_split(cfg, split) if split == "val" else read_carved(cfg, split)
        self.records, self.classes = loaded.records, loaded.classes
        self.captions: CaptionSplit | None = loaded.captions
        self.heldout: list[VideoRecord] | None = loaded.heldout
        self.backend = resolve_backend(cfg, self.records)
        if cfg.video_index:  # a bad path fails here, and forked workers inherit the table
            load_video_index(cfg.video_index)
        self.epoch = 0
        self.consumed = 0  # videos of the epoch's global order behind the batches yielded so far
        self.bad_videos: list[tuple[str, str]] = []
        self._dali = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """The epoch's global order: train, one permutation per (seed, epoch), the same at every world
        size; val and heldout, file order."""
        n = len(self.records)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.train else np.arange(n)

    @property
    def videos_per_batch(self) -> int:
        """Videos of the global order one micro-batch consumes over all ranks."""
        return self.cfg.batch_size * self.world_size

    def batches(self, start: int = 0) -> list[np.ndarray]:
        """This rank's batches of the current epoch, from video `start` of the global order on.

        train: each micro-batch takes the next `videos_per_batch` videos of the order and deals them
        round-robin over the ranks; only full micro-batches (fixed shapes). The data position is thus
        counted in videos of one order that no world size changes, and a run resumed on other ranks
        or another micro-batch goes on with the first unused video. (Round-robin inside a micro-batch
        is what the former per-rank shards `order[rank::world][: n // world]` held, batch for batch,
        so runs from before keep their data.) val: round-robin in file order, nothing dropped, so the
        ranks together cover the split exactly once (heldout: as val).
        """
        order, bs, world = self.order(), self.cfg.batch_size, self.world_size
        if not self.train:
            idx = order[self.rank :: world]
            return [idx[i : i + bs] for i in range(0, len(idx), bs)]
        step = self.videos_per_batch
        full = (len(order) - start) // step
        return [order[start + k * step : start + (k + 1) * step][self.rank :: world] for k in range(full)]

    def __len__(self) -> int:
        """Batches of a whole epoch on this rank."""
        if self.train:
            return len(self.records) // self.videos_per_batch
        return -(-len(self.records[self.rank :: self.world_size]) // self.cfg.batch_size)

    def __iter__(self) -> Iterator[dict]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[dict]:
        """The batches of the current epoch from video `start` of its global order on (see `batches`),
        identical to those of a full pass at the same world size and micro-batch.

        A batch shrinks by its bad videos (each logged with its file and reason); one with none left is
        skipped. More than `max_bad_videos` in the epoch raises BadVideoError. Iterating leaves the
        global torch RNG as it was. `consumed` is the global position after the last batch yielded.
        """
        self.bad_videos, self.consumed = [], start
        batches = self.batches(start)
        source = self._iter_dali(batches) if self.backend == "dali" else self._iter_pyav(batches)
        device = torch.device(self.cfg.device)
        for batch in _rng_isolated(source):
            self.consumed += self.videos_per_batch  # a batch left empty by bad videos is consumed too
            self._account(batch.pop("bad"))
            if batch["video"] is None:
                continue
            yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if self.bad_videos:
            log.warning(
                "epoch %d (%s, rank %d): skipped %d bad video(s): %s",
                self.epoch,
                self.split,
                self.rank,
                len(self.bad_videos),
                ", ".join(p for p, _ in self.bad_videos),
            )

    def _account(self, bad: list[tuple[str, str]]) -> None:
        for path, reason in bad:
            log.warning("skipping bad video %s: %s", path, reason)
        self.bad_videos.extend(bad)
        if len(self.bad_videos) > self.cfg.max_bad_videos:
            listing = "\n".join(f"  {p}: {r}" for p, r in self.bad_videos)
            raise BadVideoError(
                f"{len(self.bad_videos)} bad videos in epoch {self.epoch} of {self.split}, rank {self.rank} "
                f"(limit max_bad_videos={self.cfg.max_bad_videos}):\n{listing}"
            )

    def _iter_pyav(self, batches: list[np.ndarray]) -> Iterator[dict]:
        workers = self.cfg.num_workers
        loader = torch.utils.data.DataLoader(
            _PyAVBatches(self, batches),
            batch_size=None,
            shuffle=False,
            num_workers=workers,
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=2 if workers else None,
            pin_memory=torch.device(self.cfg.device).type == "cuda",
        )
        # The workers fork here. A DALI pipeline alive in this process (another loader's) must never be garbage
        # collected in a worker: its destructor waits for threads a fork does not copy, and the worker hangs.
        # The collector never visits objects frozen before the fork.
        gc.freeze()
        try:
            batches_iter = iter(loader)
        finally:
            gc.unfreeze()
        yield from batches_iter

    def _iter_dali(self, batches: list[np.ndarray]) -> Iterator[dict]:
        """Threads read and index the next two batches; the DALI graph makes batch k + 1 while batch k is with
        the training loop (see `s4v.data.dali_pipeline`)."""
        from s4v.data.dali_pipeline import DaliClips

        if self._dali is None:
            self._dali = DaliClips(self.cfg, self.train, max(self.cfg.num_workers, 1), torch.device(self.cfg.device))
        with ThreadPoolExecutor(max_workers=max(self.cfg.num_workers, 1)) as pool:
            prepared = deque(pool.submit(self._prepare_batch, b) for b in batches[:2])
            running = self._start_dali(*prepared.popleft().result()) if batches else None
            for k in range(len(batches)):
                if k + 2 < len(batches):
                    prepared.append(pool.submit(self._prepare_batch, batches[k + 2]))
                done = self._finish_dali(*running)
                running = self._start_dali(*prepared.popleft().result()) if prepared else None
                yield done

    def _prepare_batch(self, batch: np.ndarray) -> tuple[list[Prepared], list[tuple[str, str]]]:
        preps, bad = [], []
        for i in batch:
            rec = self.records[i]
            try:
                preps.append(prepare(int(i), rec, self.cfg, self.train, self.seed, self.epoch))
            except Exception as e:
                bad.append((rec.path, e.reason if isinstance(e, BadVideo) else f"corrupt ({e!r})"))
        return preps, bad

    def _start_dali(
        self, preps: list[Prepared], bad: list[tuple[str, str]]
    ) -> tuple[list[Prepared], list[tuple[str, str]], Exception | None]:
        """Schedule a batch on the graph; a batch it refuses is remembered and made the PyTorch way."""
        try:
            if preps:
                self._dali.start(preps)
            return preps, bad, None
        except Exception as e:
            return preps, bad, e

    def _finish_dali(self, preps: list[Prepared], bad: list[tuple[str, str]], error: Exception | None) -> dict:
        if not preps:
            return _collate(None, preps, bad, self.cfg, self.train)
        if error is None:
            try:
                return _collate(self._dali.result(), preps, bad, self.cfg, self.train)
            except Exception as e:
                error = e
        # A video DALI rejects although it was indexed fine: make the batch with PyAV, which names it.
        lines = str(error).splitlines() or [repr(error)]
        reason = next((ln for ln in lines if "ailed" in ln), lines[-1])  # DALI: "Assert ... failed: <why>"
        log.warning("DALI failed on a batch (%s); making it with PyAV", reason.strip())
        videos, kept = [], []
        for p in preps:
            try:
                decoded = torch.from_numpy(decode_frames(p.record.path, p.frames, p.data, p.video))
                videos.append(finish(p, decoded, self.cfg, self.train).to(self.cfg.device))
                kept.append(p)
            except BadVideo as err:
                bad.append((err.path, err.reason))
        return _collate(_stack(videos, self.train), kept, bad, self.cfg, self.train)


def build_loader(
    cfg: DataConfig, split: str = "train", rank: int = 0, world_size: int = 1, seed: int = 0
) -> VideoLoader:
    """The data contract's entry point; see `VideoLoader`."""
    loader = VideoLoader(cfg, split, rank, world_size, seed)
    if split == "heldout" and not loader.records:  # all skipped: a selection metric over nothing
        raise UserError(f"heldout split of {cfg.root}: every held-out video is in data.skip_list {cfg.skip_list}")
    if loader.train and len(loader) == 0:
        raise UserError(
            f"{split} split of {cfg.root}: {len(loader.records)} videos over {world_size} rank(s) "
            f"give no full batch of {cfg.batch_size}"
        )
    return loader
