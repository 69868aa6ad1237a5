"""Information governance: who may see what, and why (policy, facts, reasons, break-glass, training)."""
