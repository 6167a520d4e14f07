"""facenet_engine beyond one machine, on Ray (PyPI ``ray``; ``pip install "ray[data]"``).

- :func:`encode_dataset`: batch encoding with Ray Data, one front-door Pipeline per worker
  actor (GPU actors where GPUs exist), output as a Dataset or Parquet files;
  :func:`enroll_dataset` enrols such output into a gallery in one call.
- :class:`ShardedGallery`: a gallery partitioned over actors by a stable hash of the identity
  name, searched exactly (answers equal to the single gallery's).
- ``python -m facenet_engine.distributed encode|enroll|shard-gallery|identify``: the same from
  a shell (``--help``).

Call ``ray.init()`` (or ``ray.init(address="auto")`` on a cluster node) first. Importing this
package without Ray raises ImportError; ``import facenet_engine`` never needs Ray.
"""

from .encode import encode_dataset, enroll_dataset, list_images
from .sharded import ShardedGallery, merge_shards, shard_of

__all__ = ["ShardedGallery", "encode_dataset", "enroll_dataset", "list_images", "merge_shards",
           "shard_of"]
