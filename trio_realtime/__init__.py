"""trio_realtime (placeholder while the client lands)."""
