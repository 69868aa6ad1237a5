"""The lowest layer: what the SMART client (``launch``) and the viewer (``app``) both need.

UK identifier systems and NHS number rules, the server-side state store and sessions, and the one
outbound HTTP layer. ``core`` imports neither ``launch`` nor ``app``.
"""
