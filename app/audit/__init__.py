"""The audit trail (append-only, hash-chained AuditEvents), alerts and subject access reports."""
