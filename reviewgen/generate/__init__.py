"""Generate stage: the Ray Data nightly job (catalog contract, run identity, actor, pipeline)."""
