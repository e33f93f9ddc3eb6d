"""Training: the curriculum loop, stage set-up (freeze, optimizer carry-over, schedules), checkpoints, resume, metrics, reports and dry-run plans."""
