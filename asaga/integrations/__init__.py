"""Integrations with web frameworks and shared pieces they use.

- :mod:`asaga.integrations.idempotency`: run a request's work at most once per
  ``Idempotency-Key`` (framework-neutral);
- :mod:`asaga.integrations.fastapi` (extra ``asaga[fastapi]``) and
  :mod:`asaga.integrations.aiohttp` (extra ``asaga[aiohttp]``): error responses and
  idempotency for each framework. Framework imports stay inside those modules.
"""
