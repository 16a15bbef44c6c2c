"""Integrations with web frameworks and tracing, and shared pieces they use.

- :mod:`asaga.integrations.inputs`: a saga's inputs from a request body, never ``run()``'s
  options nor its resources (framework-neutral);
- :mod:`asaga.integrations.problems`: the RFC 9457 problem answer for each error, 503
  with ``Retry-After`` for an unavailable infrastructure, bodies of bounded size
  (framework-neutral);
- :mod:`asaga.integrations.idempotency`: run a request's work at most once per
  ``Idempotency-Key`` (framework-neutral);
- :mod:`asaga.integrations.fastapi` (extra ``asaga[fastapi]``) and
  :mod:`asaga.integrations.aiohttp` (extra ``asaga[aiohttp]``): inputs, error responses
  and idempotency for each framework. Framework imports stay inside those modules;
- :mod:`asaga.integrations.opentelemetry` (extra ``asaga[otel]``): spans and metrics of
  runs, steps, compensations and lease waits, from the event hooks.
"""
