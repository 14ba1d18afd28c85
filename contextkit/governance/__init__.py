"""Governance: access control and API keys, monitoring, lineage, quality reports."""
