"""Deleting old logs (gc) and the schedule that runs retention and compaction."""
