"""slimkit.conf: the Hydra config groups (package data)."""
