"""A web dashboard of durable runs: list, search and act on them in a browser.

::

    from asaga.dashboard import Dashboard

    dashboard = Dashboard(runs, sagas=[Checkout], resources={"payments": payments},
                          authorize=role_of)          # "operate" | "read" | None
    app.mount("/ops", dashboard.asgi())                # FastAPI / Starlette
    aiohttp_app.add_subapp("/ops/", dashboard.aiohttp())

or ``asaga dashboard --redis URL --saga module:Saga --token T`` (uvicorn). Needs the
``dashboard`` extra (Starlette, Jinja2, uvicorn). See docs/dashboard.md.
"""

from .._public import claim as _claim
from ._core import ACTIONS as ACTIONS
from ._core import STATUSES as STATUSES
from ._core import Action as Action
from ._core import Authorize as Authorize
from ._core import Dashboard as Dashboard
from ._core import Role as Role
from ._core import TokenAuth as TokenAuth
from ._http import RequestInfo as RequestInfo
from ._views import Field as Field
from ._views import Redact as Redact

__all__ = [
    "ACTIONS",
    "STATUSES",
    "Action",
    "Authorize",
    "Dashboard",
    "Field",
    "Redact",
    "RequestInfo",
    "Role",
    "TokenAuth",
]

_claim(__name__, globals())
del _claim
