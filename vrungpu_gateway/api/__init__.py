"""Thin HTTP/WebSocket handlers, one module per resource; each lists its ROUTES at the bottom."""
