"""A third-party domain plug-in as a team outside this project would write it (tests only)."""
