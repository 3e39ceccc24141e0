"""A/B evaluation: offline paired tests, interleaving, decision, report (no Triton imports here)."""
