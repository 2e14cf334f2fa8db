"""What every program needs around its work: config files, logs, the CLI skeleton, threads."""
