"""SMART App Launch client: EHR + standalone launch, tokens, the viewer's own keys."""
