"""The model: loading, its graph and cut, sublayers, twins, folding, precision, guided ReLUs, model files and where forward passes run."""
