"""The runs dashboard, framework-neutral: routing, pages, authorization, CSRF, actions.

::

    request (from an adapter: path within the mount, mount root, query, headers, body)
      -> static file?                      served as is (no authorization: the login
                                           page needs its stylesheet)
      -> role = authorize(request info)    "operate" | "read" | None (None: 403 page)
         GET  /            runs list       filters, search, counts, cursor pages
         GET  /runs.json   the list's first page and counts, polled by the list page
         GET  /run?id=     run page        graph with step states, steps, timeline
         GET  /confirm     the confirmation step of an action (operate only)
         POST /act         same origin? -> CSRF token? -> operate? -> valid run id?
                           -> act (undo, resume, cancel, recover, readmit)
                           -> runs.note(run_id, OperatorAction(...)) -> outcome page
         GET|POST /login   the token form (TokenAuth only)
      -> every response gets the security headers (CSP without inline scripts,
         frame-ancestors 'none', no-referrer) and, on pages, the session cookie that
         the CSRF token is derived from (HttpOnly, SameSite=Strict)

Nothing from a request reaches a run's options or resources: a saga is looked up by the
name its record carries, among the configured classes only; run ids (any text the stores
accept: escaped on pages, URL-encoded in links) and keys are checked and refused with a 400
that says why.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import inspect
import re
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import urlencode, urlsplit

import anyio
import msgspec
import structlog

from .._exceptions import AsagaError, RunNotFound
from .._saga import Saga
from ..events import OperatorAction
from ..runs import RunRecord, RunStatus, RunStore, recover_run
from ..runs._show import when
from ._http import MAX_BODY, Request, RequestInfo, Response
from ._pages import render, static_file
from ._views import (
    Redact,
    Shown,
    graph,
    run_view,
    shown_by,
    step_state,
    waits_cell,
)

if TYPE_CHECKING:
    from ._aiohttp import AiohttpApp
    from ._asgi import AsgiApp

__all__ = ["ACTIONS", "STATUSES", "Action", "Authorize", "Dashboard", "Role", "TokenAuth"]

Role = Literal["operate", "read"]
"""What a request may do: ``"operate"`` (pages and actions) or ``"read"`` (pages)."""

Authorize = Callable[[RequestInfo], "Role | Awaitable[Role | None] | None"]
"""``authorize(request) -> "operate" | "read" | None`` (or an awaitable of it):
``None`` refuses the request (a 403 page)."""

Action = Literal["undo", "resume", "cancel", "recover", "readmit"]
"""An action on a run: undo a succeeded run, resume a halted one, cancel a parked one,
recover one whose owner died, re-admit a quarantined one."""
ACTIONS: tuple[Action, ...] = get_args(Action)
"""The actions the dashboard performs (each confirmed, POST only, CSRF-checked)."""

STATUSES: tuple[str, ...] = (*get_args(RunStatus), "in_doubt", "quarantined")
"""The statuses the runs list filters by: a run's status, ``in_doubt`` (a step may or
may not have had its effect) and ``quarantined`` (set aside by recovery)."""

_ACTION_TEXT: Mapping[str, tuple[str, str]] = {
    "undo": ("Undo", "Compensate every step of this succeeded run, in reverse graph order."),
    "resume": ("Resume", "Run the halted step again; the run goes on in this process."),
    "cancel": ("Cancel", "Compensate the completed steps of this parked run and end it."),
    "recover": (
        "Recover",
        "Take this run over from its dead owner and finish or compensate it here.",
    ),
    "readmit": ("Re-admit", "Put this quarantined run back for the next recovery sweep."),
}
_OFFERED_WHEN: Mapping[str, str] = {
    "undo": "the run succeeded",
    "resume": "a step of the run halted",
    "cancel": "the run is parked (waiting)",
    "recover": "the run is unfinished (running, compensating, undoing) or quarantined",
    "readmit": "recovery set the run aside (quarantined)",
}
# A recovery that ended where recover means to leave a run: finished, parked, undone, or
# compensated (failed, cancelled: the dead run's completed steps undone).
_RECOVERED = ("succeeded", "waiting", "undone", "failed", "cancelled")

_FREE_FAILURES = 3  # wrong login tokens from one client before it must wait
_MAX_LOGIN_DELAY = 60.0  # seconds: the longest wait (doubling from 1 s)
_MAX_CLIENTS = 10_000  # clients whose wrong tokens are remembered (the latest)
_SESSION_COOKIE = "asaga_dashboard_session"
_TOKEN_COOKIE = "asaga_dashboard_token"
# A run id: any text the stores accept (a top-level run's id has 1 to 255 characters, any
# but '/'; a child run's adds '/step/attempt[/index]' to its parent's), up to the Redis
# store's bound on a name. Pages escape it, links URL-encode it.
_MAX_ID = 4096
_SAGA = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,199}")
_CURSOR = re.compile(r"[\x21-\x7e]{1,512}")
_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    # Mermaid's SVG carries a <style> element and style attributes: styles only, never
    # scripts, may be inline.
    "style-src 'self' 'unsafe-inline'; font-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = (
    ("Content-Security-Policy", _CSP),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)
_logger = structlog.get_logger("asaga.dashboard")


class TokenAuth:
    """The ``authorize`` of a dashboard guarded by tokens (``asaga dashboard --token``).

    ``operate``: the token that allows actions. ``read``: a token that allows reading
    only; without it, pages are open to anyone who reaches the server (bind it to
    127.0.0.1, the default) and only actions need a token. A token is given once, in the
    dashboard's login form or as ``Authorization: Bearer <token>``; the form sets an
    HttpOnly, SameSite=Strict cookie holding a digest of it (never the token itself).
    """

    def __init__(self, *, operate: str | None = None, read: str | None = None) -> None:
        for name, token in (("operate", operate), ("read", read)):
            if token is not None and len(token) < 8:
                raise ValueError(f"the {name} token must have at least 8 characters")
        self.operate = operate
        self.read = read
        self._key = secrets.token_bytes(32)

    def cookie_for(self, token: str) -> tuple[Role, str] | None:
        """The role ``token`` gives and the cookie value that stands for it; ``None``
        for a wrong token."""
        role = self._role_of_token(token)
        if role is None:
            return None
        return role, self._digest(role)

    def __call__(self, request: RequestInfo) -> Role | None:
        """The role of ``request``: its bearer token, else its cookie; else ``"read"``
        when no read token is set, else ``None``."""
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            return self._role_of_token(header[7:].strip())
        cookie = request.cookies.get(_TOKEN_COOKIE)
        if cookie:
            for role in ("operate", "read"):
                if hmac.compare_digest(cookie, self._digest(role)):
                    return role
        return "read" if self.read is None else None

    def _role_of_token(self, token: str) -> Role | None:
        given = token.encode()
        if self.operate is not None and hmac.compare_digest(given, self.operate.encode()):
            return "operate"
        if self.read is not None and hmac.compare_digest(given, self.read.encode()):
            return "read"
        return None

    def _digest(self, role: str) -> str:
        token = self.operate if role == "operate" else self.read
        return hmac.new(self._key, f"{role}:{token}".encode(), hashlib.sha256).hexdigest()


class Dashboard:
    """A web dashboard of the durable runs recorded in ``runs``: list, search, run pages
    with the saga's graph, and actions (undo, resume, cancel, recover, re-admit).

    - ``sagas``: the saga classes whose runs can be acted on and drawn (a run of another
      saga is shown without its graph and without actions); ``resources``: their
      ``Resource`` inputs (never recorded, so given here, as to
      :func:`asaga.runs.recover`), each saga given only those it declares. A saga whose
      required resources are missing is warned about once (``dashboard_missing_resources``)
      and its runs are not acted on (but re-admitted); their pages say why.
    - ``authorize(request) -> "operate" | "read" | None`` (sync or async): who may read
      and who may act. Without it every page renders and every action is refused (403).
      :class:`TokenAuth` is the one the standalone server uses.
    - ``redact(saga, field, name, value) -> value``: what a page shows of each input,
      step result and error (default: the value as is).
    - ``secret``: the key the CSRF tokens are derived from (default: random per process;
      give the same bytes to every process behind one load balancer).
    - ``poll_seconds`` / ``poll_minutes``: the list page polls for updates every
      ``poll_seconds`` for at most ``poll_minutes`` (and never while its tab is hidden).
    - ``allowed_hosts``: the ``Host`` headers the dashboard answers (``"ops.example.com"``
      matches that name on any port, ``"127.0.0.1:8000"`` that port only); any other host
      is a 421 page, and a form's ``Origin`` must name one of them (against DNS
      rebinding). ``None`` (default): any host, for a dashboard mounted in an application
      that checks its hosts itself (e.g. Starlette's ``TrustedHostMiddleware``).

    Serve it with :meth:`asgi` (Starlette, FastAPI, uvicorn) or :meth:`aiohttp`.
    """

    def __init__(
        self,
        runs: RunStore,
        *,
        sagas: Sequence[type[Saga]] = (),
        resources: Mapping[str, Any] | None = None,
        authorize: Authorize | None = None,
        redact: Redact | None = None,
        secret: bytes | None = None,
        title: str = "asaga runs",
        page_size: int = 50,
        poll_seconds: float = 5.0,
        poll_minutes: float = 10.0,
        allowed_hosts: Sequence[str] | None = None,
    ) -> None:
        specs: dict[str, type[Saga]] = {}
        for saga in sagas:
            spec = getattr(saga, "__asaga__", None)
            if spec is None:
                raise TypeError(f"Dashboard(sagas=...) takes saga classes, got {saga!r}")
            specs[spec.plan.saga] = saga
        if not 1 <= page_size <= 500:
            raise ValueError("page_size must be between 1 and 500")
        if not poll_seconds >= 1 or not poll_minutes >= 0:
            raise ValueError("poll_seconds >= 1 and poll_minutes >= 0")
        if authorize is None:
            _logger.warning(
                "dashboard_without_authorize",
                advice="every page (run inputs and results included, unless redacted) is "
                "open to whoever reaches the dashboard, and every action is refused; give "
                "authorize=... (or TokenAuth) to guard it",
            )
        self.runs = runs
        self.sagas: Mapping[str, type[Saga]] = specs
        self.resources: Mapping[str, Any] = dict(resources or {})
        for name, saga in specs.items():
            missing = _missing_resources(saga, self.resources)
            if missing:
                _logger.warning(
                    "dashboard_missing_resources",
                    saga=name,
                    missing=missing,
                    advice=f"no action can be done on a run of saga {name} (the run pages "
                    "say so): give its resources to the Dashboard (resources=...)",
                )
        self.authorize = authorize
        self.redact = redact
        self.title = title
        self.page_size = page_size
        self.poll_seconds = poll_seconds
        self.poll_minutes = poll_minutes
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        # Wrong login tokens by client: (count, time of the last), oldest client first.
        self._failures: dict[str, tuple[int, float]] = {}
        self._clock: Callable[[], float] = time.monotonic
        if isinstance(allowed_hosts, str):
            raise TypeError("allowed_hosts is a sequence of hosts, not one str: wrap it in [...]")
        self.allowed_hosts: frozenset[str] | None = (
            None if allowed_hosts is None else frozenset(h.strip().lower() for h in allowed_hosts)
        )

    # -- adapters -------------------------------------------------------------------------

    def asgi(self) -> AsgiApp:
        """An ASGI application (Starlette) serving the dashboard: ``uvicorn.run(...)``, or
        mounted in FastAPI/Starlette with ``app.mount("/ops", dashboard.asgi())``.
        Needs the ``dashboard`` extra."""
        from ._asgi import AsgiApp

        return AsgiApp(self)

    def aiohttp(self) -> AiohttpApp:
        """An aiohttp application serving the dashboard, to add as a sub-application:
        ``app.add_subapp("/ops/", dashboard.aiohttp())``. Needs aiohttp."""
        from ._aiohttp import aiohttp_app

        return aiohttp_app(self)

    # -- requests -------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Answer one request. Never raises for what a request holds: a bad one is a
        4xx page, a failed action is shown on its page, a store that cannot be reached
        is a 503 page (the error is logged, never shown with a traceback)."""
        session = request.cookies.get(_SESSION_COOKIE, "")
        new_session = None
        if not _valid_session(session):
            session = new_session = secrets.token_urlsafe(24)
        try:
            if not self._host_allowed(request.headers.get("host", "")):
                response = self._error(
                    request,
                    session,
                    421,
                    "this dashboard does not answer to that host name: open it by one of "
                    "its own (allowed_hosts)",
                )
            else:
                response = await self._route(request, session)
        except ValueError as exc:  # a value of the request (or a cursor) that is refused
            response = self._error(request, session, 400, str(exc))
        except RunNotFound as exc:
            message = f"no run {exc.run_id} in the store (never recorded, or expired)"
            response = self._error(request, session, 404, message)
        except AsagaError as exc:
            _logger.warning("dashboard_store_error", error=repr(exc), path=request.path)
            response = self._error(
                request, session, 503, f"the run store did not answer: {type(exc).__name__}"
            )
        except Exception as exc:  # noqa: BLE001 - a 500 page; logged without the request
            # Neither the request's headers (cookies, tokens) nor a traceback's locals are
            # logged: the error, and where it happened.
            _logger.error(
                "dashboard_error",
                path=request.path[:200],
                error=repr(exc)[:500],
                traceback="".join(traceback.format_tb(exc.__traceback__)),
            )
            response = self._error(request, session, 500, "the dashboard failed: see its log")
        if new_session is not None and response.content_type.startswith("text/html"):
            response.headers.append(("Set-Cookie", _cookie(request, _SESSION_COOKIE, new_session)))
        present = {name.lower() for name, _ in response.headers}
        response.headers.extend(h for h in _SECURITY_HEADERS if h[0].lower() not in present)
        return response

    async def _route(self, request: Request, session: str) -> Response:
        path, method = request.path, request.method
        if path.startswith("/static/") and method in ("GET", "HEAD"):
            found = _static(path[len("/static/") :])
            return found or self._error(request, session, 404, f"no static file {path}")
        if len(request.body) > MAX_BODY:
            return self._error(request, session, 413, "the request body is too large")
        if path == "/login":
            return await self._login(request, session)
        if path == "/logout":
            return self._logout(request, session)
        role = await self._role(request)
        if role is None:
            if isinstance(self.authorize, TokenAuth):
                return self._login_page(request, session, status=403, message="")
            return self._error(request, session, 403, "you are not allowed to see this dashboard")
        if method == "GET" or method == "HEAD":
            if path == "/":
                return await self._list(request, session, role)
            if path == "/runs.json":
                return await self._poll(request)
            if path == "/run":
                return await self._run(request, session, role)
            if path == "/confirm":
                return await self._confirm(request, session, role)
        elif method == "POST" and path == "/act":
            return await self._act(request, session, role)
        if path in ("/", "/runs.json", "/run", "/confirm", "/act"):
            return self._error(request, session, 405, f"{method} is not allowed on {path}")
        return self._error(request, session, 404, f"no page {path}")

    async def _role(self, request: Request) -> Role | None:
        if self.authorize is None:
            return "read"
        role = self.authorize(request.info())
        if inspect.isawaitable(role):
            role = await role
        if role not in (None, "read", "operate"):
            raise TypeError(f"authorize returned {role!r}: expected 'operate', 'read' or None")
        return role

    # -- the runs list --------------------------------------------------------------------

    async def _list(self, request: Request, session: str, role: Role) -> Response:
        filters = _filters(request.query)
        listed, cursor = await self._listed(filters)
        counts = await self.runs.counts(saga=filters["saga"] or None)
        return self._page(
            request,
            session,
            "list.html",
            filters=filters,
            rows=[_row(r, self.redact) for r in listed],
            cursor=cursor,
            counts=[(s, counts.get(s, 0)) for s in STATUSES],
            total=sum(counts.get(s, 0) for s in get_args(RunStatus)),
            statuses=STATUSES,
            sagas=sorted(self.sagas),
            role=role,
            live=not filters["cursor"] and not filters["q"],
            poll=_query({k: v for k, v in filters.items() if v and k != "cursor"}),
        )

    async def _listed(self, filters: Mapping[str, str]) -> tuple[list[RunRecord], str | None]:
        if filters["q"]:
            try:
                found = await self.runs.find(filters["q"], limit=self.page_size)
            except ValueError as exc:
                raise ValueError(f"search: {exc}") from None
            return list(found), None
        try:
            page = await self.runs.page(
                status=filters["status"] or None,
                saga=filters["saga"] or None,
                since=_epoch(filters["since"], "since"),
                until=_epoch(filters["until"], "until"),
                cursor=filters["cursor"] or None,
                limit=self.page_size,
            )
        except ValueError as exc:
            raise ValueError(f"the list cannot be shown: {exc}") from None
        return list(page.runs), page.cursor

    async def _poll(self, request: Request) -> Response:
        filters = _filters(request.query)
        listed, _ = await self._listed({**filters, "cursor": ""})
        counts = await self.runs.counts(saga=filters["saga"] or None)
        body = {
            "at": when(time.time()),
            "counts": {s: counts.get(s, 0) for s in STATUSES},
            "runs": [_row(r, self.redact) for r in listed],
        }
        return Response(200, msgspec.json.encode(body), "application/json")

    # -- a run ----------------------------------------------------------------------------

    async def _run(self, request: Request, session: str, role: Role) -> Response:
        run_id = _run_id(request.query.get("id", ""))
        record = await self._load(run_id)
        saga = self.sagas.get(record.saga)
        spec = saga.__asaga__ if saga is not None else None
        view = run_view(record, spec, self.redact)
        actions = await self._actions(record) if role == "operate" else []
        unavailable = None  # why the actions that fit this run are not offered
        withheld = role == "operate" and self._not_actionable(record) is None
        if saga is not None and withheld and set(self._offered(record)) - set(actions):
            unavailable = self._lacking(saga)
        return self._page(
            request,
            session,
            "run.html",
            view=view,
            record=record,
            graph=graph(saga, record) if saga is not None else None,
            known=saga is not None,
            same_version=spec is not None and spec.saga_version == record.saga_version,
            actions=actions,
            unavailable=unavailable,
            role=role,
            action_text=_ACTION_TEXT,
        )

    async def _load(self, run_id: str) -> RunRecord:
        """The run's record with its events (:class:`RunNotFound`: a 404 page)."""
        return await self.runs.load(run_id, events=True)

    async def _actions(self, record: RunRecord) -> list[Action]:
        """The actions the run page offers for ``record``, the only ones done when posted:
        none for a run of a saga (or a ``saga_version``) this dashboard was not given;
        none but re-admit (which needs no resources) for a saga whose resources were not
        given."""
        if self._not_actionable(record) is not None:
            return []
        offered = self._offered(record)
        saga = self.sagas[record.saga]
        if self._lacking(saga) is not None:
            return [a for a in offered if a == "readmit"]
        return offered

    def _offered(self, record: RunRecord) -> list[Action]:
        """The actions that fit where ``record`` stands."""
        if record.owner == "quarantine" and not record.finished:
            # Set aside by recovery, or readmitted since (then recover takes it): the
            # record alone does not say which, each action says so when done.
            return ["readmit", "recover"] if record.status != "waiting" else ["readmit"]
        found: list[Action] = []
        if record.status == "succeeded":
            found.append("undo")
        if record.status == "waiting":
            if any(w.kind == "halt" for w in record.waits):
                found.append("resume")
            found.append("cancel")
        if record.status in ("running", "compensating", "undoing"):
            found.append("recover")
        return found

    def _not_actionable(self, record: RunRecord) -> str | None:
        """Why this dashboard cannot act on ``record`` (``None``: it can)."""
        saga = self.sagas.get(record.saga)
        if saga is None:
            return (
                f"saga {record.saga} is not one this dashboard was given (sagas=...): "
                "it cannot act on its runs"
            )
        spec = saga.__asaga__
        if spec is not None and spec.saga_version != record.saga_version:
            return (
                f"run {record.run_id} was recorded by saga_version {record.saga_version!r} "
                f"of {record.saga}, and this dashboard has {spec.saga_version!r}: act on it "
                "from a dashboard (or process) with that version"
            )
        return None

    async def _confirm(self, request: Request, session: str, role: Role) -> Response:
        if role != "operate":
            return self._error(request, session, 403, "acting on runs needs the operate role")
        action = _action(request.query.get("action", ""))
        run_id = _run_id(request.query.get("id", ""))
        record = await self._load(run_id)
        return self._page(
            request,
            session,
            "confirm.html",
            action=action,
            action_text=_ACTION_TEXT[action],
            record=record,
            role=role,
        )

    # -- actions --------------------------------------------------------------------------

    async def _act(self, request: Request, session: str, role: Role) -> Response:
        refused = self._refused(request, session)
        if refused is not None:
            return refused
        if role != "operate":
            return self._error(request, session, 403, "acting on runs needs the operate role")
        form = request.form()
        action = _action(form.get("action", ""))
        run_id = _run_id(form.get("id", ""))
        record = await self._load(run_id)
        by = self._who(request)
        # Shielded: a request cancelled meanwhile (the browser closed, the server stopping)
        # must not cut a resumed run or an undo off half-way, nor leave it unnoted. The
        # action is bounded by its saga's own timeouts.
        with anyio.CancelScope(shield=True):
            ok, outcome, in_doubt, noted = await self._act_and_note(action, record, by)
        _logger.info("dashboard_action", action=action, run_id=run_id, by=by, outcome=outcome)
        return self._page(
            request,
            session,
            "result.html",
            status=200 if ok else 409,
            action=action,
            action_text=_ACTION_TEXT[action],
            record=record,
            ok=ok,
            outcome=outcome,
            in_doubt=in_doubt,
            noted=noted,
            role=role,
        )

    async def _act_and_note(
        self, action: Action, record: RunRecord, by: str | None
    ) -> tuple[bool, str, tuple[str, ...], str]:
        """Do ``action`` on ``record`` and note it in the run's events: whether it did what
        it meant to, its outcome (as ``redact`` lets it be shown: it may quote a reason, a
        key, an error), the steps it left in doubt, and why it was not noted (or "")."""
        in_doubt: tuple[str, ...] = ()
        try:
            ok, outcome, in_doubt = await self._perform(action, record)
        except Exception as exc:  # noqa: BLE001 - an action's failure is shown on its page
            ok, outcome = False, f"failed: {type(exc).__name__}: {exc}"
        outcome = str(shown_by(self.redact, record.saga)("outcome", action, outcome))
        run_id = record.run_id
        noted = ""
        try:
            await self.runs.note(
                run_id,
                OperatorAction(
                    saga=record.saga, run_id=run_id, action=action, by=by, outcome=outcome
                ),
            )
        except Exception as exc:  # noqa: BLE001 - the action is done; say it was not noted
            noted = f"(the action could not be written to the run's events: {exc!r})"
        return ok, outcome, in_doubt, noted

    async def _perform(
        self, action: Action, record: RunRecord
    ) -> tuple[bool, str, tuple[str, ...]]:
        """Do ``action``: whether it was done, what happened (or why not), and the steps
        a recovery left in doubt. An action the run page does not offer for ``record``
        (as it stands now) is refused, nothing done."""
        run_id = record.run_id
        refused = self._not_actionable(record)
        saga = self.sagas.get(record.saga)
        if refused is not None or saga is None:
            return False, refused or f"saga {record.saga} is not given", ()
        lacking = self._lacking(saga)
        if lacking is not None and action != "readmit":
            return False, lacking, ()
        if action not in self._offered(record):
            where = "quarantined" if record.owner == "quarantine" else record.status
            return (
                False,
                f"refused: {action} is offered only when {_OFFERED_WHEN[action]}, and run "
                f"{run_id} is {where}; nothing was done (reload its page for the actions "
                "it offers)",
                (),
            )
        if action == "readmit":
            await self.runs.readmit(run_id)
            return True, "readmitted: the next recovery sweep takes it", ()
        resources = self._resources_of(saga)
        shown = shown_by(self.redact, record.saga)
        if action == "undo":
            undone = await saga.undo(run_id, runs=self.runs, **resources)
            already = " (nothing to do: undone before)" if undone.already else ""
            return True, f"{undone.status}{already}", ()
        if action == "resume":
            delivery = await saga.resume(run_id, runs=self.runs, **resources)
            halted = any(w.kind == "halt" for w in delivery.waits)
            ok = delivery.status in ("succeeded", "delivered") or (
                delivery.status == "waiting" and not halted
            )
            return ok, _delivered(delivery, shown), ()
        if action == "cancel":
            delivery = await saga.cancel(run_id, runs=self.runs, **resources)
            return delivery.status == "cancelled", _delivered(delivery, shown), ()
        return await self._recover(saga, record, resources)

    async def _recover(
        self, saga: type[Saga], record: RunRecord, resources: Mapping[str, Any]
    ) -> tuple[bool, str, tuple[str, ...]]:
        """Recover this one run, if its owner is dead (:func:`asaga.runs.recover_run`):
        done when the run finished, parked, was undone or was compensated (``failed``,
        ``cancelled``), with the steps it left in doubt (they need a human)."""
        done = await recover_run(self.runs, record.run_id, sagas=[saga], resources=resources)
        if done.outcome == "refused":
            return False, f"{done.error}; nothing was done", ()
        text = done.outcome
        notes = []
        if done.compensated:
            notes.append("compensated: " + ", ".join(done.compensated))
        if done.in_doubt:
            notes.append("in doubt: " + ", ".join(done.in_doubt))
        if notes:
            text += f" ({'; '.join(notes)})"
        if done.error:
            text += f": {done.error}"
        return done.outcome in _RECOVERED, text, done.in_doubt

    def _lacking(self, saga: type[Saga]) -> str | None:
        """Why no action but re-admit can be done on a run of ``saga``: the resources it
        declares that this dashboard was not given (``None``: it has them all)."""
        missing = _missing_resources(saga, self.resources)
        if not missing:
            return None
        spec = saga.__asaga__
        name = spec.plan.saga if spec is not None else saga.__name__
        return (
            f"saga {name} needs its resources {missing}, which this dashboard was not "
            "given: actions on its runs are unavailable (give them to the Dashboard: "
            "resources=...)"
        )

    def _resources_of(self, saga: type[Saga]) -> dict[str, Any]:
        """The resources ``saga`` declares, among those given."""
        spec = saga.__asaga__
        assert spec is not None
        declared = [n for n, i in spec.plan.inputs.items() if i.resource]
        return {n: self.resources[n] for n in declared if n in self.resources}

    def _host_allowed(self, host: str) -> bool:
        """Whether ``host`` (a ``Host`` header, or an origin's netloc) is one this
        dashboard answers to (any, without ``allowed_hosts``)."""
        if self.allowed_hosts is None:
            return True
        host = host.strip().lower()
        if host in self.allowed_hosts:
            return True
        name = host[: host.rindex(":")] if host.rfind(":") > host.rfind("]") else host
        return bool(name) and name in self.allowed_hosts

    def _refused(self, request: Request, session: str) -> Response | None:
        """The 403 page of a form that was not sent from this dashboard's page (another
        origin, or no Origin nor Referer) or without this session's CSRF token."""
        if not _same_origin(request, self._host_allowed):
            message = "refused: the form was not sent from this dashboard's page"
            return self._error(request, session, 403, message)
        token = request.form().get("csrf", "")
        if not hmac.compare_digest(token.encode(), self._csrf(session).encode()):
            message = "refused: the form's token is missing or stale; reload the page and retry"
            return self._error(request, session, 403, message)
        return None

    def _who(self, request: Request) -> str:
        return f"dashboard ({request.client or 'unknown client'})"

    # -- login (TokenAuth) ----------------------------------------------------------------

    async def _login(self, request: Request, session: str) -> Response:
        auth = self.authorize
        if not isinstance(auth, TokenAuth):
            message = "this dashboard has no login: its host application decides"
            return self._error(request, session, 404, message)
        if request.method in ("GET", "HEAD"):
            return self._login_page(request, session, status=200, message="")
        if request.method != "POST":
            return self._error(request, session, 405, f"{request.method} is not allowed here")
        refused = self._refused(request, session)
        if refused is not None:
            return refused
        client = request.client or "unknown client"
        wait = self._login_wait(client)
        if wait > 0:
            message = f"too many wrong tokens from {client}: wait {wait:.0f} s and retry"
            return self._login_page(request, session, status=429, message=message)
        form = request.form()
        given = auth.cookie_for(form.get("token", ""))
        if given is None:
            self._login_failed(client)
            return self._login_page(request, session, status=403, message="wrong token")
        self._failures.pop(client, None)
        response = Response(303, headers=[("Location", f"{request.root}/")])
        response.headers.append(("Set-Cookie", _cookie(request, _TOKEN_COOKIE, given[1])))
        return response

    def _login_wait(self, client: str) -> float:
        """Seconds ``client`` must wait before its next login attempt (0: none)."""
        failed = self._failures.get(client)
        if failed is None:
            return 0.0
        count, at = failed
        if count < _FREE_FAILURES:
            return 0.0
        delay = min(2.0 ** (count - _FREE_FAILURES), _MAX_LOGIN_DELAY)
        return max(0.0, at + delay - self._clock())

    def _login_failed(self, client: str) -> None:
        """Note a wrong token from ``client`` (the table keeps the latest clients only)."""
        count = self._failures.pop(client, (0, 0.0))[0]
        self._failures[client] = (count + 1, self._clock())
        while len(self._failures) > _MAX_CLIENTS:
            self._failures.pop(next(iter(self._failures)))

    def _logout(self, request: Request, session: str) -> Response:
        """Forget the token cookie (POST, CSRF-checked), back to the list."""
        if request.method != "POST":
            return self._error(request, session, 405, f"{request.method} is not allowed here")
        refused = self._refused(request, session)
        if refused is not None:
            return refused
        response = Response(303, headers=[("Location", f"{request.root}/")])
        gone = _cookie(request, _TOKEN_COOKIE, "") + "; Max-Age=0"
        response.headers.append(("Set-Cookie", gone))
        return response

    def _login_page(self, request: Request, session: str, *, status: int, message: str) -> Response:
        return self._page(request, session, "login.html", status=status, message=message, role=None)

    # -- rendering ------------------------------------------------------------------------

    def _csrf(self, session: str) -> str:
        return hmac.new(self._secret, f"csrf:{session}".encode(), hashlib.sha256).hexdigest()

    def _page(
        self,
        request: Request,
        session: str,
        template: str,
        *,
        status: int = 200,
        **context: Any,
    ) -> Response:
        root = request.root

        def url(path: str, **query: Any) -> str:
            return root + path + (("?" + _query(query)) if any(query.values()) else "")

        body = render(
            template,
            title=self.title,
            root=root,
            url=url,
            csrf=self._csrf(session),
            login=isinstance(self.authorize, TokenAuth),
            logged_in=_TOKEN_COOKIE in request.cookies,
            poll_seconds=self.poll_seconds,
            poll_minutes=self.poll_minutes,
            state_of=step_state,
            when=when,
            **context,
        )
        return Response(status, body)

    def _error(self, request: Request, session: str, status: int, message: str) -> Response:
        if request.path == "/runs.json":
            return Response(status, msgspec.json.encode({"error": message}), "application/json")
        return self._page(request, session, "error.html", status=status, message=message, role=None)


# -- request values ---------------------------------------------------------------------------


def _filters(query: Mapping[str, str]) -> dict[str, str]:
    """The list's filters from the query string, each checked (400 otherwise)."""
    saga = query.get("saga", "").strip()
    status = query.get("status", "").strip()
    text = query.get("q", "").strip()
    cursor = query.get("cursor", "")
    if saga and not _SAGA.fullmatch(saga):
        raise ValueError("saga: a saga class name (letters, digits, '_', '.')")
    if status and status not in STATUSES:
        raise ValueError(f"status: one of {', '.join(STATUSES)}")
    if text and (len(text) > 255 or not text.isprintable()):
        raise ValueError("search: a run id, idempotency key or event key of 1 to 255 characters")
    if cursor and not _CURSOR.fullmatch(cursor):
        raise ValueError("cursor: not one this dashboard gave (follow the 'older' link)")
    filters = {"saga": saga, "status": status, "q": text, "cursor": cursor}
    for name in ("since", "until"):
        value = query.get(name, "").strip()
        _epoch(value, name)
        filters[name] = value
    return filters


def _epoch(value: str, name: str) -> float | None:
    """A ``datetime-local`` value (``YYYY-MM-DDTHH:MM[:SS]``, UTC) as epoch seconds."""
    if not value:
        return None
    for layout in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return float(calendar.timegm(time.strptime(value, layout)))
        except ValueError:
            continue
    raise ValueError(f"{name}: a UTC time as YYYY-MM-DDTHH:MM")


def _run_id(value: str) -> str:
    if not 1 <= len(value) <= _MAX_ID:
        raise ValueError(f"id: a run id of 1 to {_MAX_ID} characters")
    return value


def _action(value: str) -> Action:
    for action in ACTIONS:
        if value == action:
            return action
    raise ValueError(f"action: one of {', '.join(ACTIONS)}")


def _valid_session(value: str) -> bool:
    return 20 <= len(value) <= 64 and all(c.isalnum() or c in "-_" for c in value)


def _same_origin(request: Request, allowed: Callable[[str], bool]) -> bool:
    """The form comes from this server's pages: its Origin header (else its Referer's
    origin) names this server's host, and that host is ``allowed`` (one of the
    dashboard's ``allowed_hosts``: the Host header alone is the client's word), or, when
    a browser sends ``Origin: null`` (it does for a form under ``Referrer-Policy:
    no-referrer``, which the pages set), its ``Sec-Fetch-Site`` header (which a page
    cannot set) says ``same-origin``."""
    host = request.headers.get("host", "")
    source = request.headers.get("origin") or request.headers.get("referer") or ""
    if source in ("", "null"):
        return request.headers.get("sec-fetch-site") == "same-origin"
    netloc = urlsplit(source).netloc
    return bool(host) and netloc == host and allowed(netloc)


def _query(values: Mapping[str, Any]) -> str:
    return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def _cookie(request: Request, name: str, value: str) -> str:
    secure = "; Secure" if request.scheme == "https" else ""
    return f"{name}={value}; Path={request.root or ''}/; HttpOnly; SameSite=Strict{secure}"


def _row(record: RunRecord, redact: Redact | None) -> dict[str, str]:
    return {
        "id": record.run_id,
        "saga": record.saga,
        "status": record.status,
        "created": when(record.created_at),
        "updated": when(record.updated_at),
        "failed_step": record.failed_step or "",
        "waits": waits_cell(record.waits, shown_by(redact, record.saga)),
        "key": record.idempotency_key or "",
    }


def _static(name: str) -> Response | None:
    found = static_file(name)
    if found is None:
        return None
    body, media = found
    return Response(200, body, media, headers=[("Cache-Control", "public, max-age=3600")])


def _missing_resources(saga: type[Saga], resources: Mapping[str, Any]) -> list[str]:
    """The required ``Resource`` inputs of ``saga`` that ``resources`` lacks."""
    spec = saga.__asaga__
    if spec is None:  # pragma: no cover - the constructor takes saga classes only
        return []
    inputs = spec.plan.inputs
    return [n for n, i in inputs.items() if i.resource and i.required and n not in resources]


def _delivered(delivery: Any, shown: Shown) -> str:
    text = str(delivery.status)
    if delivery.waits:
        text += " (waiting for " + waits_cell(delivery.waits, shown) + ")"
    if delivery.error is not None:
        text += f": {shown('error', 'run', str(delivery.error))}"
    return text
