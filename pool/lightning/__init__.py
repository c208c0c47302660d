"""The Lightning room: everything that speaks Lightning's worker protocol."""
