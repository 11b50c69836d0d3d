"""The HTTP frontend: parsing, validation, auth, encoding and SSE. It talks to the engine core
only through an engine client (service/frontend/core_client.py) and never imports service.core."""
