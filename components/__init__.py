"""KFP v2 components: one per pipeline step, each a thin wrapper over the fusionrec library."""
