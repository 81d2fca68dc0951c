"""What every connector shares, written once."""
