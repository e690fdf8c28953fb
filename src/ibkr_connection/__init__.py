"""ibkr-connection."""
