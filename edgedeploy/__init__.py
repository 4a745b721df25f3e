"""edgedeploy: take an EdgeZSAD anomaly-detection checkpoint to edge devices and prove fidelity."""

__version__ = "0.1.0"
