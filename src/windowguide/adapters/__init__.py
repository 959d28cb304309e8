"""Adapters from other libraries' models to windowguide denoisers."""
