"""Data stage: review corpora to one cleaned, product-split review table; user tables for scoring."""
