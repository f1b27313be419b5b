"""Content: feeds in, editions out. feeds (fetch and parse) -> sources (poll into posts) ->
editions (select, group, subject) -> render (Jinja2 + MJML, once per variant); plaintext cleans
every text that comes from outside."""
