"""The `ray-amalgam` command line."""
