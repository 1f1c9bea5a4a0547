"""The framework's ceiling: the same gunicorn settings serving a constant JSON object."""

from flask import Flask

app = Flask(__name__)


@app.get("/ceiling")
def ceiling() -> dict[str, str]:
    """A constant answer: what Flask and gunicorn cost with no work at all."""
    return {"status": "ok"}
