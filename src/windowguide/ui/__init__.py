"""``windowguide ui``: a local web page (Gradio) to try every method side by side (``app.py``); the tabs'
work is plain functions (``runs.py``: each result from the CLI's own code path) so that it is tested
without a browser."""
