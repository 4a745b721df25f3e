"""QNN target (RB5 Gen2): Qualcomm AI Hub jobs, and the offline QAIRT / AI Hub scripts."""
