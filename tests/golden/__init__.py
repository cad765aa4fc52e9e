"""Golden values: pruning results recorded on one commit, compared bit for bit on another."""
