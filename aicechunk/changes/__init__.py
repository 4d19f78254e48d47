"""Pending changes: change sets, chunk tables, the rules changes obey, and conflicts."""
