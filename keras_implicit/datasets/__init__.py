"""Datasets: MNIST from local files or download, generated toy densities and spirals."""
