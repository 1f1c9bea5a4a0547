"""Flask's JSON provider on orjson: answers are encoded several times faster."""

from __future__ import annotations

import json
from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider

# Sorted keys, as Flask's own provider writes them: the same answer is the same bytes.
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def encode(obj: Any) -> bytes:
    """`obj` as JSON; what orjson refuses, such as a lone surrogate, goes through json."""
    try:
        return orjson.dumps(obj, option=_OPTIONS)
    except TypeError:
        # The json module escapes what is not UTF-8 as \\uXXXX, as Flask's own provider does.
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class OrjsonProvider(JSONProvider):
    """JSON through orjson; the views hand it plain data already dumped by marshmallow."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Serialize `obj` to a JSON string."""
        return encode(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Deserialize JSON from `s`."""
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """A JSON response of the arguments, encoded straight to bytes."""
        body = encode(self._prepare_response_obj(args, kwargs))
        return Response(body, mimetype="application/json")
