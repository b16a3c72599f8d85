"""The floor every stage stands on: errors users can act on, consoles, safe output files, optional extras, child processes."""
