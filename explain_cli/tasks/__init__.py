"""How each task reads a model's outputs: segmentation and detection."""
