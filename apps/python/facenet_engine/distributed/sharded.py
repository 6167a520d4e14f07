"""Galleries beyond one process, on Ray (PyPI ``ray``): :class:`ShardedGallery`.

A sharded gallery is a folder: ``manifest.json`` (shard count, model) and one ordinary gallery
file per shard (``shard-0000.sqlite``, ...). Identities are partitioned by a stable hash of
their name (BLAKE2b-64 of its UTF-8 bytes, modulo the shard count); each shard is a Ray actor
holding its file open for writing and its rows in the engine's exact k-NN index.

``identify`` fans a probe batch out to every shard; each returns its per-identity top-k and
the driver merges them by (squared distance, shard, slot). The answers equal the single-index
search of the same rows (:meth:`facenet_engine.Gallery.identify`), distances and order
included, with one documented exception: two identities on different shards at exactly the
same float32 distance are ordered by shard, where one gallery file orders them by enrolment.

Writes are routed to the owning shard and committed to its SQLite file before they return. A
shard actor that dies is restarted by Ray from its file; a search is retried, and a write that
was cut off is retried only when the restarted shard shows it did not commit (its identity's
embedding count), so nothing is lost or duplicated. One :class:`ShardedGallery` handle should
write a given identity at a time.

"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import ray

from ..gallery import DEFAULT_THRESHOLD, Gallery, Identification, Identity, _resolve_model
from ..search import FlatIndex
from .. import _core
from .._core import EngineError

__all__ = ["ShardedGallery", "shard_of"]

PathLike = Union[str, "os.PathLike[str]"]
_MANIFEST = "manifest.json"
_MAX_CANDIDATES = 1024  # as the engine's Identifier: at most this many rows per search
_BULK = 512  # identities per bulk call when a gallery file is split


def shard_of(name: str, shards: int) -> int:
    """The shard that owns identity `name`: BLAKE2b-64 of its UTF-8 bytes modulo `shards`."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def _shard_file(root: pathlib.Path, i: int) -> str:
    return str(root / f"shard-{i:04d}.sqlite")


class _Shard:
    """One shard: its gallery file open for writing and its rows in a FlatIndex (slot = row
    position in enrolment order, as the single gallery's index)."""

    def __init__(self, path: str, device: str, storage: str, threads: int) -> None:
        self._gallery = Gallery.open(path, "w")
        self._device, self._storage, self._threads = device, storage, threads
        self._load()

    def _load(self) -> None:
        vectors, names = self._gallery.embeddings()
        self._names = list(names)
        dim = int(self._gallery.stats()["dim"] or 0)
        self._index = None
        if dim:
            self._index = FlatIndex(dim, storage=self._storage, device=self._device,
                                    threads=self._threads)
            if len(names):
                self._index.add(vectors)
        counts: Dict[str, int] = {}
        for n in self._names:
            counts[n] = counts.get(n, 0) + 1
        self._counts = counts

    def ping(self) -> int:
        return len(self._names)

    def count(self, name: str) -> int:
        return self._counts.get(name, 0)

    def search(self, probes: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray, List[List[str]]]:
        """Per probe, this shard's nearest identities, up to k: (squared distances float32
        (n, k) padded inf, slots int64 (n, k) padded -1, names per probe)."""
        n = probes.shape[0]
        dist = np.full((n, k), np.inf, np.float32)
        slots = np.full((n, k), -1, np.int64)
        names: List[List[str]] = [[] for _ in range(n)]
        rows = len(self._names)
        if rows == 0 or n == 0:
            return dist, slots, names
        kk = int(min(rows, k * max(self._counts.values()), _MAX_CANDIDATES))
        d, labels = self._index.search(probes, kk)
        for q in range(n):
            seen = set()
            for i in range(kk):
                row = int(labels[q, i])
                if row < 0 or len(names[q]) == k:
                    break
                who = self._names[row]
                if who in seen:
                    continue
                seen.add(who)
                dist[q, len(names[q])] = d[q, i]
                slots[q, len(names[q])] = row
                names[q].append(who)
        return dist, slots, names

    def enroll(self, name: str, embeddings: np.ndarray, model: str, sources: Optional[List[str]],
               metadata: Optional[dict]) -> Identity:
        ident = self._gallery.enroll(name, embeddings, model=model, sources=sources,
                                     metadata=metadata)
        x = np.ascontiguousarray(embeddings, np.float32).reshape(-1, embeddings.shape[-1])
        if self._index is None:
            self._load()  # the first enrolment fixed the dim: rebuild from the file
        else:
            self._index.add(x, np.arange(len(self._names), len(self._names) + len(x)))
            self._names.extend([name] * len(x))
            self._counts[name] = self._counts.get(name, 0) + len(x)
        return ident

    def enroll_many(self, items: List[Tuple[str, np.ndarray, Optional[List[str]],
                                             Optional[dict]]], model: str) -> int:
        """Bulk load: each (name, embeddings, sources, metadata) enrolled in turn, the index
        rebuilt once at the end; returns the shard's row count."""
        for name, x, sources, metadata in items:
            self._gallery.enroll(name, x, model=model, sources=sources, metadata=metadata)
        self._load()
        return len(self._names)

    def remove(self, names: List[str]) -> Dict[str, int]:
        removed = self._gallery.remove_many(names)
        self._load()  # rebuilt in enrolment order, as a fresh single index would be
        return removed

    def identities(self) -> List[Identity]:
        return self._gallery.identities()

    def identity(self, name: str) -> Identity:
        return self._gallery.identity(name)

    def stats(self) -> Dict[str, Any]:
        return self._gallery.stats()


class ShardedGallery:
    """A gallery partitioned over Ray actors; see the module docstring.

    Make one with :meth:`create` (empty) or :meth:`from_gallery` (split an existing gallery
    file), or reopen a folder with :meth:`open`. Ray must be initialised (``ray.init()``)
    first. ``device`` ("cpu" or "cuda") and ``storage`` ("fp32", "bf16" CPU, "fp16" CUDA) choose
    each shard's index; ``num_gpus`` / ``num_cpus`` are each shard actor's Ray resources.
    ``storage="auto"`` takes what Gallery.identify takes for the whole gallery as it is when
    opened (bf16 planes from 100,000 rows where the CPU runs bf16), so that the distances are
    the same bits; a gallery that grows past that size keeps its storage until reopened.
    """

    def __init__(self, root: PathLike, *, device: str = "cpu", storage: str = "auto",
                 threads: int = 0, num_cpus: Optional[float] = None,
                 num_gpus: Optional[float] = None, restart_timeout_s: float = 60.0) -> None:
        self.root = pathlib.Path(root).absolute()  # the actors' working folder is not ours
        manifest = self.root / _MANIFEST
        if not manifest.is_file():
            raise EngineError(f"sharded gallery '{self.root}': no {_MANIFEST} (make one with "
                              "ShardedGallery.create or from_gallery)")
        info = json.loads(manifest.read_text())
        self.shards = int(info["shards"])
        self.model = str(info["model"])
        self._restart_timeout_s = restart_timeout_s
        if storage == "auto":
            # As Gallery.identify's index for the whole gallery, so that the distances are the
            # same bits: the bf16 planes' exact re-ranking and the fp32 scan round differently.
            rows = 0
            for i in range(self.shards):
                with Gallery.open(_shard_file(self.root, i), "r") as g:
                    rows += int(g.stats()["embeddings"])
            storage = _core._identify_storage(rows) if device == "cpu" else "fp32"
        self.storage = storage
        options: Dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0}
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        if num_gpus is not None:
            options["num_gpus"] = num_gpus
        actor = ray.remote(**options)(_Shard)
        self._actors = [actor.remote(_shard_file(self.root, i), device, storage, threads)
                        for i in range(self.shards)]
        ray.get([a.ping.remote() for a in self._actors])

    # ---- making one ----------------------------------------------------------------------------

    @classmethod
    def create(cls, root: PathLike, shards: int, *, model: PathLike, dim: int = 0,
               **options: Any) -> "ShardedGallery":
        """A new, empty sharded gallery in folder `root` (which must not hold one) for `model`
        (an embedding spec or a model file)."""
        if int(shards) < 1:
            raise EngineError(f"sharded gallery '{root}': shards must be >= 1, got {shards}")
        root = pathlib.Path(root)
        if (root / _MANIFEST).exists():
            raise EngineError(f"sharded gallery '{root}' exists already")
        spec, model_dim = _resolve_model(model, str(root))
        root.mkdir(parents=True, exist_ok=True)
        for i in range(shards):
            Gallery.create(_shard_file(root, i), model=spec, dim=dim or model_dim).close()
        tmp = root / (_MANIFEST + ".tmp")
        tmp.write_text(json.dumps({"shards": int(shards), "model": spec}))
        os.replace(tmp, root / _MANIFEST)  # the manifest last: a half-made folder has none
        return cls(root, **options)

    @classmethod
    def from_gallery(cls, gallery: PathLike, root: PathLike, shards: int,
                     **options: Any) -> "ShardedGallery":
        """Splits the gallery file `gallery` into a new sharded gallery `root`: every identity,
        with its metadata, sources order and rows, goes to its shard in enrolment order."""
        with Gallery.open(gallery, "r") as g:
            st = g.stats()
            if not st["model"]:
                raise EngineError(f"gallery '{gallery}' has no model yet: nothing to shard")
            if options.get("storage", "auto") == "auto" and options.get("device", "cpu") == "cpu":
                options["storage"] = _core._identify_storage(int(st["embeddings"]))
            sharded = cls.create(root, shards, model=st["model"], dim=int(st["dim"]), **options)
            # In bulk, chunk by chunk per shard; not retried: a failure leaves a new folder to
            # delete and make again.
            chunks: List[List[tuple]] = [[] for _ in range(shards)]
            pending = []
            for ident in g.identities():
                vectors, _ = g.embeddings(ident.name)
                i = shard_of(ident.name, shards)
                chunks[i].append((ident.name, vectors, None, ident.metadata))
                if len(chunks[i]) == _BULK:
                    pending.append(sharded._actors[i].enroll_many.remote(chunks[i], sharded.model))
                    chunks[i] = []
            pending += [sharded._actors[i].enroll_many.remote(c, sharded.model)
                        for i, c in enumerate(chunks) if c]
            ray.get(pending)
        return sharded

    @classmethod
    def open(cls, root: PathLike, **options: Any) -> "ShardedGallery":
        """Starts the shard actors of an existing sharded gallery folder."""
        return cls(root, **options)

    # ---- fault handling ------------------------------------------------------------------------

    def _call(self, shard: int, method: str, *args: Any) -> Any:
        """A read-only call, retried on a shard restarted by Ray."""
        deadline = time.monotonic() + self._restart_timeout_s
        while True:
            try:
                return ray.get(getattr(self._actors[shard], method).remote(*args))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    # ---- writing -------------------------------------------------------------------------------

    def enroll(self, name: str, embeddings: Any, *, sources: Optional[Sequence[PathLike]] = None,
               metadata: Optional[Dict[str, Any]] = None) -> Identity:
        """Enrols `embeddings` ((n, D) or (D,)) under `name` on its shard; committed to the
        shard's file when this returns."""
        x = np.ascontiguousarray(embeddings, np.float32)
        if x.ndim == 1:
            x = x[None, :]
        shard = shard_of(name, self.shards)
        src = None if sources is None else [os.fspath(s) for s in sources]
        before = self._call(shard, "count", name)
        try:
            return ray.get(self._actors[shard].enroll.remote(name, x, self.model, src, metadata))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            after = self._call(shard, "count", name)  # waits for the restarted shard
            if after == before + len(x):  # it committed before the actor died
                return self._call(shard, "identity", name)
            if after != before:
                raise EngineError(f"enroll '{name}': shard {shard} holds {after} rows of it, "
                                  f"expected {before} or {before + len(x)}: another writer?")
            return self._call(shard, "enroll", name, x, self.model, src, metadata)

    def remove(self, name: str) -> int:
        """Removes `name` and its embeddings; returns how many embeddings went."""
        return self.remove_many([name])[name]

    def remove_many(self, names: Sequence[str]) -> Dict[str, int]:
        """Removes every one of `names` (each shard all-or-nothing for its own names)."""
        by_shard: Dict[int, List[str]] = {}
        for n in names:
            by_shard.setdefault(shard_of(n, self.shards), []).append(n)
        out: Dict[str, int] = {}
        for shard, group in by_shard.items():
            out.update(self._call(shard, "remove", group))
        return out

    # ---- reading -------------------------------------------------------------------------------

    def identities(self) -> List[Identity]:
        """Every identity of every shard, by shard then enrolment order."""
        parts = [self._call(s, "identities") for s in range(self.shards)]
        return [i for part in parts for i in part]

    def stats(self) -> Dict[str, Any]:
        parts = [self._call(s, "stats") for s in range(self.shards)]
        return {"shards": self.shards, "model": self.model,
                "identities": sum(int(p["identities"]) for p in parts),
                "embeddings": sum(int(p["embeddings"]) for p in parts)}

    def identify(self, probes: Any, k: int = 5,
                 threshold: Optional[float] = None) -> List[Identification]:
        """1:K over every shard, merged exactly (see the module docstring). `threshold` None is
        :data:`facenet_engine.DEFAULT_THRESHOLD`."""
        q = np.ascontiguousarray(probes, np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if int(k) < 1:
            raise EngineError(f"identify: k must be >= 1, got {k}")
        thr = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        ref = ray.put(q)
        futures = [a.search.remote(ref, int(k)) for a in self._actors]
        parts = []
        for shard, f in enumerate(futures):
            try:
                parts.append(ray.get(f))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                parts.append(self._call(shard, "search", q, int(k)))
        return merge_shards(parts, int(k), thr)


def merge_shards(parts: Sequence[Tuple[np.ndarray, np.ndarray, List[List[str]]]], k: int,
                 threshold: float) -> List[Identification]:
    """The exact global top-k of per-shard top-k lists: by (squared distance, shard, slot)."""
    if not parts:
        return []
    dist = np.concatenate([p[0] for p in parts], axis=1)
    slots = np.concatenate([p[1] for p in parts], axis=1)
    shard = np.concatenate([np.full(p[0].shape, s, np.int64) for s, p in enumerate(parts)], axis=1)
    order = np.lexsort((slots, shard, dist), axis=-1)[:, :k]
    root = np.sqrt(np.maximum(np.float32(0), dist))  # float32 sqrt, as the engine's merge
    out: List[Identification] = []
    for q in range(dist.shape[0]):
        top = []
        for c in order[q]:
            if slots[q, c] < 0:
                break
            s = int(shard[q, c])
            top.append((parts[s][2][q][int(c) - s * k], float(root[q, c])))  # parts are k wide
        if not top:
            raise EngineError("identify: the sharded gallery holds no embeddings")
        best = top[0][0] if top[0][1] <= threshold else "unknown"
        out.append(Identification(best, top[0][1], top))
    return out
