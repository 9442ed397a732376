"""ray_amalgam: amalgamate filtered knowledge from multi-task teacher CNNs into one student."""

__version__ = "0.1.0"
