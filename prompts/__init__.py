"""Sandboxed prompt rendering, token budgets and LLM calls (prompt views; see their issue)."""
