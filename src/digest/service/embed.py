"""The subscribe form for the blog (`/embed`): HTML to paste into a Blogger gadget, a WordPress
block or a Ghost card, which posts across origins to `{public_url}/subscribe`.

Nothing on our side stands in the way of that POST: the pages set no cookie (so SameSite has
nothing to withhold), the app checks no Origin or Referer, and our CSP's `form-action` governs
forms on our pages only; the answer is the same "Check your inbox" page as for our own form, a
top-level page that X-Frame-Options and COOP leave alone. The rate limit, the honeypot, the
answer that tells nothing and the double opt-in apply as they do to our form.
"""

from urllib.parse import urlsplit

import jinja2


def form(env: jinja2.Environment, *, action: str, newsletter_name: str, categories: list[str],
         cadences: list[str]) -> str:
    """The form's HTML (templates/web/embed_form.html), its values escaped. `cadences`: the names
    of the cadences a reader may choose, the main one first (none when there is no choice)."""
    return env.get_template("web/embed_form.html").render(
        action=action, newsletter={"name": newsletter_name}, categories=categories, cadence_names=cadences
    )


def content_security_policy(public_url: str) -> str:
    """The /embed page's CSP: the pages' own, except that its preview of the form keeps the inline
    `style` attributes the form has on the blog (style only, still no script) and may post to
    public_url's origin (the page may be read at another address, e.g. 127.0.0.1 behind a proxy)."""
    parts = urlsplit(public_url)
    return (
        "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; script-src 'none'; "
        f"form-action 'self' {parts.scheme}://{parts.netloc}; frame-ancestors 'none'; base-uri 'none'"
    )
