"""The supervisor room: the arbiter loop that owns the pool and the Lightning connection."""
