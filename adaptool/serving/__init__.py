"""``adaptool serve``: one base model, many adapters chosen per request, behind an
OpenAI-compatible HTTP API (FastAPI + uvicorn) with a playground page."""
