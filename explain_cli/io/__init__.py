"""Files: atomic writes, manifests, the report."""
