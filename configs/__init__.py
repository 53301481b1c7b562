"""Pipeline templates shipped with slimops; `slimops init` copies them into a project."""
