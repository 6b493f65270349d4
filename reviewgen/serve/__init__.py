"""Serve stage: the Ray Serve scoring deployment and its FastAPI ingress.

`app_builder` is re-exported so the documented import path `reviewgen.serve:app_builder` (Serve configs,
the RayService manifest) keeps working.
"""

from reviewgen.serve.app import app_builder

__all__ = ["app_builder"]
