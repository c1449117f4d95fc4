"""Images and dataset layouts."""
