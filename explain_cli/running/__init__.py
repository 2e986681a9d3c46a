"""The batch engine: images through decode, compute and finish in batches, in input order, each image's error its own;
interrupts held while a result is accounted."""
