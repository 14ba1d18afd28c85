"""Data quality inside a job: what it measures before it commits, drift against the previous job,
the expectations that gate the commit, and what it left in the online table."""
