"""Pictures: heatmaps, overlays, drawings. No TensorFlow."""
