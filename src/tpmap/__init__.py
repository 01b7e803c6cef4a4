"""tpmap: map dry-needled trigger points on a leg-and-hip body atlas."""
