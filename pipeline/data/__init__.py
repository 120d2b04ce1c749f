"""WebDataset shards in, tensors out: shard specs and tar reading (:mod:`.shards`), the selection cut
into work units (:mod:`.plan`), and decoding a unit's samples (:mod:`.decode`)."""

from rscert.data.plan import Plan, Selection, Unit, plan_units
from rscert.data.shards import ShardError, expand_shards

__all__ = ["Plan", "Selection", "ShardError", "Unit", "expand_shards", "plan_units"]
