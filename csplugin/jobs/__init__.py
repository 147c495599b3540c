"""Jobs: one module per command; they read particle tables, run engines and write outputs."""
