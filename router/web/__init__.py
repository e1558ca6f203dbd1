"""The status pages for the people on call, on the metrics endpoint's port (`metrics: pages`).

`server` is the WSGI app the exporter hands every path but /metrics, /healthz and /readyz
(bounded by its own slots, so a slow page never delays a scrape); `auth` the login, roles
and CSRF tokens; `panels` the registry of pages; `views` and `actions` what they read and do.
A new panel (commitments, fleet) is one module with a view function plus one template,
registered in `panels.PANELS`.
"""
