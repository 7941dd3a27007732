"""metasched: cluster state collection and turnaround-based ranking for Galaxy/TPV."""

__version__ = "0.1.0"
