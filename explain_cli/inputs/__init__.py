"""What a run reads: sources, decoding, labels, truth, shards."""
