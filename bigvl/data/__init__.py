"""Data: sources (random-access records), transforms (the `pp` spec), tokenizer, grain loader."""
