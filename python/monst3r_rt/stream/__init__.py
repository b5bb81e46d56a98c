"""Real-time streaming mode."""
