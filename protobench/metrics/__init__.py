"""Built-in metrics: one module per entry, named after it; each registers itself when first asked for."""
