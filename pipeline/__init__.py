"""Data side of reenactfaces: download, curate, shard. Never imports `model`."""
