"""Built-in dataset layouts: one module per layout, named after it; each registers itself when first asked for."""
