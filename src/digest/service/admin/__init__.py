"""/admin in `digest serve`: the operator's pages, behind a password.

Modules (the web ones load FastAPI; the others are plain services, usable from the CLI and
`digest worker`, so this package's __init__ imports nothing):

- `accounts`: admins (`digest admin add/remove/list`), argon2id password hashes, sessions.
- `area`: the foundation every admin page stands on: `mount()` (what service.web calls),
  `AdminContext` with `require_admin` / `require_form` (signed in; signed in and the form's CSRF
  token checked), `page()` (an admin template, never cached) and the admin paths.
- `signin`: the login form (rate-limited per client and per account) and logout.
- `home`: the overview and the next edition (preview, test mail, "send now").
- `overview`: the overview's numbers, each one aggregate query on indexed columns.
- `chart`: the 26-week chart as SVG, drawn here (no script, nothing from another origin).
- `sending`: "send now" requests and the background thread that makes the send.
- `testmail`: the outbox kind that mails the next edition to an admin.
"""
